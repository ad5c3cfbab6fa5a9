-- title: Scheduling latency
-- chart: bar
-- order: 50
-- description: Milliseconds from a peer's registration to each kind of decision about it (how many in brackets).
SELECT kind || ' (' || decisions || ')' AS kind, p50_ms, p95_ms, p99_ms
FROM (
    SELECT kind, count(*) AS decisions,
           round(quantile_cont(latency_ms, 0.5), 1) AS p50_ms,
           round(quantile_cont(latency_ms, 0.95), 1) AS p95_ms,
           round(quantile_cont(latency_ms, 0.99), 1) AS p99_ms
    FROM decision_latency
    WHERE latency_ms IS NOT NULL
    GROUP BY kind
)
ORDER BY kind
