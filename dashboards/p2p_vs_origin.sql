-- title: P2P versus origin traffic
-- chart: line
-- order: 20
-- description: MiB per minute served by peers and by the origin, over the last hour of data.
SELECT minute,
       round(sum(bytes_from_peers) / 1048576, 2) AS p2p_mib,
       round(sum(bytes_from_origin) / 1048576, 2) AS origin_mib
FROM piece_minutes
WHERE minute >= (SELECT max(minute) FROM piece_minutes) - INTERVAL 60 MINUTE
GROUP BY minute
ORDER BY minute
