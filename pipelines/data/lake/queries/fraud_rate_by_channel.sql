-- Fraud rate by channel
-- answers: transactions, frauds, fraud rate and fraud amount per channel (card present,
-- answers: e-commerce, ATM; 'unknown' when the source had no channel) over a day range.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    coalesce(channel, 'unknown') AS channel,
    count(*) AS transactions,
    count(CASE WHEN is_fraud = 1 THEN 1 END) AS frauds,
    CAST(count(CASE WHEN is_fraud = 1 THEN 1 END) AS DOUBLE)
        / nullif(count(is_fraud), 0) AS fraud_rate,
    sum(CASE WHEN is_fraud = 1 THEN amount ELSE 0 END) AS fraud_amount
FROM transactions
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY coalesce(channel, 'unknown')
ORDER BY fraud_rate DESC, channel
