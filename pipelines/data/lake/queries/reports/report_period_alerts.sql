-- Alerts with their case, for SAR candidates
-- answers: every alert on a transaction dated in a day range (primary and grouped), with the
-- answers: disposition of the case it belongs to (its own, or the one it was grouped into),
-- answers: who closed it, and the masked card of the alerted transaction.
-- param: start_day varchar '0001-01-01' first day of alerted transactions included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day of alerted transactions included (yyyy-MM-dd)
SELECT
    a.alert_id,
    a.transaction_id,
    a.card_id,
    a.terminal_id,
    a.amount,
    a.tx_timestamp,
    a.score,
    a.severity,
    a.model_version,
    a.reasons,
    a.raised_at,
    a.grouped_into,
    c.case_id,
    c.status,
    c.disposition,
    c.closed_at,
    c.closed_by,
    t.card_masked
FROM alerts AS a
JOIN cases AS c ON c.alert_id = coalesce(a.grouped_into, a.alert_id)
LEFT JOIN transactions AS t ON t.transaction_id = a.transaction_id AND t.dt = a.dt
WHERE a.dt BETWEEN :start_day AND :end_day
ORDER BY a.tx_timestamp, a.alert_id
