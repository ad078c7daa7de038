-- Score distribution by model version
-- answers: how the scores of each model version spread over equal-width bins of [0, 1]:
-- answers: transactions and alerts per bin (score 1.0 falls in the last bin).
-- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
-- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)
-- param: bins integer 20 number of bins
WITH binned AS (
    SELECT
        model_version,
        decision,
        least(CAST(floor(score * :bins) AS BIGINT), :bins - 1) AS bin
    FROM scored
    WHERE dt BETWEEN :start_day AND :end_day
)
SELECT
    model_version,
    bin,
    CAST(bin AS DOUBLE) / :bins AS bin_low,
    CAST(bin + 1 AS DOUBLE) / :bins AS bin_high,
    count(*) AS transactions,
    count(CASE WHEN decision = 'alert' THEN 1 END) AS alerts
FROM binned
GROUP BY model_version, bin
ORDER BY model_version, bin
