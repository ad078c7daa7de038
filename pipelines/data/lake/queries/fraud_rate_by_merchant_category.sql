-- Fraud rate by merchant category
-- answers: which merchant categories carry the most fraud: transactions, frauds, fraud rate
-- answers: and fraud amount per category ('unknown' when missing), riskiest first.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    coalesce(merchant_category, 'unknown') AS merchant_category,
    count(*) AS transactions,
    count(CASE WHEN is_fraud = 1 THEN 1 END) AS frauds,
    CAST(count(CASE WHEN is_fraud = 1 THEN 1 END) AS DOUBLE)
        / nullif(count(is_fraud), 0) AS fraud_rate,
    sum(CASE WHEN is_fraud = 1 THEN amount ELSE 0 END) AS fraud_amount
FROM transactions
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY coalesce(merchant_category, 'unknown')
ORDER BY fraud_rate DESC, merchant_category
