-- Riskiest terminals
-- answers: the terminals with the highest fraud rate (among those with at least
-- answers: min_transactions transactions), ranked; ties broken by fraud count, then id.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
-- param: min_transactions integer 20 ignore terminals with fewer transactions
-- param: top_n integer 20 how many terminals to return
WITH per_terminal AS (
    SELECT
        terminal_id,
        count(*) AS transactions,
        count(CASE WHEN is_fraud = 1 THEN 1 END) AS frauds,
        CAST(count(CASE WHEN is_fraud = 1 THEN 1 END) AS DOUBLE)
            / nullif(count(is_fraud), 0) AS fraud_rate,
        sum(CASE WHEN is_fraud = 1 THEN amount ELSE 0 END) AS fraud_amount
    FROM transactions
    WHERE dt BETWEEN :start_day AND :end_day
    GROUP BY terminal_id
    HAVING count(*) >= :min_transactions
),
ranked AS (
    SELECT
        terminal_id, transactions, frauds, fraud_rate, fraud_amount,
        row_number() OVER (
            ORDER BY coalesce(fraud_rate, 0) DESC, frauds DESC, terminal_id
        ) AS risk_rank
    FROM per_terminal
)
SELECT risk_rank, terminal_id, transactions, frauds, fraud_rate, fraud_amount
FROM ranked
WHERE risk_rank <= :top_n
ORDER BY risk_rank
