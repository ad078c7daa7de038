-- Alert queue status
-- answers: how many cases are open, in review or closed, by severity, and when the oldest
-- answers: one in each group was opened (how long the queue has been waiting).
-- param: start_day varchar '0001-01-01' first day of alerted transactions included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day of alerted transactions included (yyyy-MM-dd)
SELECT
    c.status,
    a.severity,
    count(*) AS cases,
    min(c.opened_at) AS oldest_opened_at
FROM cases AS c
JOIN alerts AS a ON a.alert_id = c.alert_id
WHERE a.dt BETWEEN :start_day AND :end_day
GROUP BY c.status, a.severity
ORDER BY c.status, a.severity
