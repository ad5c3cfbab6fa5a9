-- title: Back-to-source ratio over time
-- chart: line
-- order: 10
-- description: Share of piece bytes fetched from the origin, per minute, over the last hour of data.
WITH span AS (
    SELECT max(minute) AS last, greatest(min(minute), max(minute) - INTERVAL 59 MINUTE) AS first
    FROM piece_minutes
), minutes AS (
    SELECT unnest(generate_series(first, last, INTERVAL 1 MINUTE)) AS minute FROM span
)
SELECT minute,
       round(sum(bytes_from_origin) / nullif(sum(bytes_from_origin + bytes_from_peers), 0), 4)
           AS back_to_source_ratio
FROM minutes LEFT JOIN piece_minutes USING (minute)
GROUP BY minute
ORDER BY minute
