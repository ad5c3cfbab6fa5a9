-- title: Job outcomes
-- chart: bar
-- order: 80
-- description: Jobs by kind and state, and their per-host outcomes.
WITH j AS (
    SELECT kind || ' ' || state AS outcome, count(*) AS jobs FROM jobs GROUP BY ALL
), h AS (
    SELECT jobs.kind || ' ' || job_hosts.state AS outcome, count(*) AS host_outcomes
    FROM job_hosts JOIN jobs USING (job_id) GROUP BY ALL
)
SELECT coalesce(j.outcome, h.outcome) AS outcome,
       coalesce(jobs, 0) AS jobs,
       coalesce(host_outcomes, 0) AS host_outcomes
FROM j FULL OUTER JOIN h ON j.outcome = h.outcome
ORDER BY outcome
