-- Quarantine reasons over time
-- answers: how many landed rows the ETL quarantined each day, by reason, so data-quality
-- answers: regressions in a source show up as a change in the mix.
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
SELECT
    dt AS day,
    reason,
    count(*) AS quarantined_rows,
    count(DISTINCT source_file) AS source_files
FROM quarantine
WHERE dt BETWEEN :start_day AND :end_day
GROUP BY dt, reason
ORDER BY dt, quarantined_rows DESC, reason
