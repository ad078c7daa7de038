-- Fraud rate by day
-- answers: how many transactions arrived each UTC day, how many were labelled fraud, the
-- answers: fraud rate among labelled transactions and the amount (in transaction currency).
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    dt AS day,
    count(*) AS transactions,
    count(CASE WHEN is_fraud = 1 THEN 1 END) AS frauds,
    CAST(count(CASE WHEN is_fraud = 1 THEN 1 END) AS DOUBLE)
        / nullif(count(is_fraud), 0) AS fraud_rate,
    sum(amount) AS amount
FROM transactions
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY dt
ORDER BY dt
