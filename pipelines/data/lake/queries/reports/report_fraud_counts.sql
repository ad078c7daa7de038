-- Fraud counts for the payment fraud statistics
-- answers: transactions and frauds (count and amount in transaction currency) per month,
-- answers: quarter, channel, fraud type and currency; fraud is the latest label when one
-- answers: exists (dispositions, chargebacks), else the ingested flag.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
WITH latest_labels AS (
    SELECT transaction_id, max_by(is_fraud, label_known_at) AS is_fraud
    FROM labels
    GROUP BY transaction_id
),
tx AS (
    SELECT
        date_format(t."timestamp", '%Y-%m') AS month,
        CAST(year(t."timestamp") AS varchar) || '-Q'
            || CAST(quarter(t."timestamp") AS varchar) AS quarter,
        t.channel,
        t.fraud_scenario,
        upper(coalesce(t.currency, 'USD')) AS currency,
        t.amount,
        coalesce(l.is_fraud, t.is_fraud) AS fraud
    FROM transactions AS t
    LEFT JOIN latest_labels AS l ON l.transaction_id = t.transaction_id
    WHERE t.dt BETWEEN :start_day AND :end_day
)
SELECT
    month,
    quarter,
    channel,
    CASE WHEN fraud = 1 THEN fraud_scenario END AS fraud_type,
    currency,
    count(*) AS transactions,
    coalesce(sum(amount), 0) AS amount,
    count(CASE WHEN fraud = 1 THEN 1 END) AS fraud_transactions,
    coalesce(sum(CASE WHEN fraud = 1 THEN amount END), 0) AS fraud_amount,
    count(CASE WHEN fraud IS NULL THEN 1 END) AS unlabelled
FROM tx
GROUP BY month, quarter, channel, CASE WHEN fraud = 1 THEN fraud_scenario END, currency
ORDER BY month, channel, fraud_type, currency
