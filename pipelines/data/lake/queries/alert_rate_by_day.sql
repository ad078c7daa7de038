-- Alert rate by day
-- answers: per day, how many transactions were scored, how many crossed the alert threshold,
-- answers: the alert rate and the mean score.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    dt AS day,
    count(*) AS scored,
    count(CASE WHEN decision = 'alert' THEN 1 END) AS alerts,
    CAST(count(CASE WHEN decision = 'alert' THEN 1 END) AS DOUBLE) / count(*) AS alert_rate,
    avg(score) AS mean_score
FROM scored
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY dt
ORDER BY dt
