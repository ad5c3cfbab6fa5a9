-- title: Active peers per cluster
-- chart: bar
-- order: 30
-- description: Peers that finished a piece in the last five minutes of data, and hosts alive.
WITH active AS (
    SELECT cluster, count(DISTINCT peer_id) AS active_peers
    FROM piece_minutes
    WHERE minute >= (SELECT max(minute) FROM piece_minutes) - INTERVAL 5 MINUTE
    GROUP BY cluster
), alive AS (
    SELECT cluster, count(*) AS alive_hosts FROM hosts WHERE state = 'alive' GROUP BY cluster
)
SELECT coalesce(active.cluster, alive.cluster) AS cluster,
       coalesce(active_peers, 0) AS active_peers,
       coalesce(alive_hosts, 0) AS alive_hosts
FROM active FULL OUTER JOIN alive ON active.cluster = alive.cluster
ORDER BY cluster
