-- title: Top tasks
-- chart: bar
-- order: 70
-- description: The ten tasks with the most peers, with how their downloads ended.
SELECT coalesce(url, task_id) AS task, peers, succeeded_peers, failed_peers
FROM tasks
ORDER BY peers DESC, task
LIMIT 10
