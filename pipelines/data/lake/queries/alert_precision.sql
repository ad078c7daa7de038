-- Alert precision from dispositions
-- answers: of the cases investigators closed, which share was confirmed fraud (confirmed_fraud
-- answers: or escalate_sar) and which were false positives, per severity and over all ('all').
-- param: start_day varchar '0001-01-01' first day of alerted transactions included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day of alerted transactions included (yyyy-MM-dd)
SELECT
    coalesce(a.severity, 'all') AS severity,
    count(*) AS cases,
    count(CASE WHEN c.status = 'closed' THEN 1 END) AS closed,
    count(CASE WHEN c.disposition_is_fraud = 1 THEN 1 END) AS confirmed_fraud,
    count(CASE WHEN c.disposition_is_fraud = 0 THEN 1 END) AS false_positives,
    CAST(count(CASE WHEN c.disposition_is_fraud = 1 THEN 1 END) AS DOUBLE)
        / nullif(count(c.disposition_is_fraud), 0) AS precision
FROM cases AS c
JOIN alerts AS a ON a.alert_id = c.alert_id
WHERE a.dt BETWEEN :start_day AND :end_day
GROUP BY ROLLUP (a.severity)
ORDER BY a.severity NULLS LAST
