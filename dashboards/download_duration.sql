-- title: Download duration percentiles
-- chart: bar
-- order: 40
-- description: Milliseconds a successful download took, per cluster.
SELECT cluster,
       round(quantile_cont(cost_ms, 0.5), 1) AS p50_ms,
       round(quantile_cont(cost_ms, 0.9), 1) AS p90_ms,
       round(quantile_cont(cost_ms, 0.95), 1) AS p95_ms,
       round(quantile_cont(cost_ms, 0.99), 1) AS p99_ms
FROM downloads
WHERE ok
GROUP BY cluster
ORDER BY cluster
