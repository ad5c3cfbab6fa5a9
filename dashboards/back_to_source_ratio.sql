-- title: Back-to-source ratio over time
-- chart: line
-- order: 10
-- description: Share of piece bytes fetched from the origin, per minute, over the last hour of data.
SELECT minute,
       round(sum(bytes_from_origin) / nullif(sum(bytes_from_origin + bytes_from_peers), 0), 4)
           AS back_to_source_ratio
FROM piece_minutes
WHERE minute >= (SELECT max(minute) FROM piece_minutes) - INTERVAL 60 MINUTE
GROUP BY minute
ORDER BY minute
