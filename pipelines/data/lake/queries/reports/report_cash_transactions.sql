-- Cash transactions for the CTR and structuring rules
-- answers: every cash transaction (is_cash, or an ATM, which moves cash whatever the flag says)
-- answers: dated in a day range, with the masked card; the CTR report aggregates them per person.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    transaction_id,
    "timestamp",
    customer_id,
    terminal_id,
    amount,
    currency,
    channel,
    is_cash,
    card_masked
FROM transactions
WHERE dt BETWEEN :start_day AND :end_day
    AND (coalesce(is_cash, false) OR channel = 'atm')
ORDER BY "timestamp", transaction_id
