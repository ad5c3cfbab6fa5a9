-- title: Back-to-source reasons
-- chart: bar
-- order: 60
-- description: Why the scheduler sent peers to the origin, or failed to schedule them.
SELECT coalesce(nullif(reason, ''), '(none given)') AS reason, count(*) AS decisions
FROM decisions
WHERE kind IN ('back_to_source', 'failed')
GROUP BY ALL
ORDER BY decisions DESC, reason
LIMIT 10
