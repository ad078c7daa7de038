-- Alert volume vs investigator capacity
-- answers: per day of the alerted transactions, the cases opened (one per primary alert),
-- answers: alerts grouped into an open case, high-severity cases, and how the cases compare
-- answers: with the investigators' daily capacity k (utilisation, cases over capacity).
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
-- param: capacity integer 100 cases the investigators can work per day (k)
SELECT
    dt AS day,
    count(CASE WHEN grouped_into IS NULL THEN 1 END) AS cases_opened,
    count(CASE WHEN grouped_into IS NOT NULL THEN 1 END) AS grouped_alerts,
    count(CASE WHEN grouped_into IS NULL AND severity = 'high' THEN 1 END) AS high_severity,
    CAST(:capacity AS BIGINT) AS capacity,
    CAST(count(CASE WHEN grouped_into IS NULL THEN 1 END) AS DOUBLE)
        / nullif(:capacity, 0) AS utilisation,
    greatest(count(CASE WHEN grouped_into IS NULL THEN 1 END) - :capacity, 0) AS over_capacity
FROM alerts
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY dt
ORDER BY dt
