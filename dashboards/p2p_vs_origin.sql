-- title: P2P versus origin traffic
-- chart: line
-- order: 20
-- description: MiB per minute served by peers and by the origin, over the last hour of data.
WITH span AS (
    SELECT max(minute) AS last, greatest(min(minute), max(minute) - INTERVAL 59 MINUTE) AS first
    FROM piece_minutes
), minutes AS (
    SELECT unnest(generate_series(first, last, INTERVAL 1 MINUTE)) AS minute FROM span
)
SELECT minute,
       round(coalesce(sum(bytes_from_peers), 0) / 1048576, 2) AS p2p_mib,
       round(coalesce(sum(bytes_from_origin), 0) / 1048576, 2) AS origin_mib
FROM minutes LEFT JOIN piece_minutes USING (minute)
GROUP BY minute
ORDER BY minute
