-- title: Task holders at the last census
-- chart: table
-- order: 90
-- description: Per task, the hosts that held it when the last sync_peers job asked every peer.
WITH census AS (
    SELECT job_id FROM jobs WHERE kind = 'sync_peers' AND state = 'succeeded'
    ORDER BY finished_at DESC, job_id LIMIT 1
)
SELECT h.task_id, any_value(t.url) AS url, count(*) AS hosts,
       list(h.host_id ORDER BY h.host_id) AS host_ids,
       list(DISTINCT h.reason ORDER BY h.reason) AS held_as
FROM job_hosts h JOIN census USING (job_id) LEFT JOIN tasks t USING (task_id)
GROUP BY h.task_id
ORDER BY hosts DESC, h.task_id
