-- Reconciliation: row count and metric sums per date and media in the raw tables, @first..@last.
-- The raw CTE: UNION ALL over the media tables filtered to those dates (rendered from the config).
WITH raw AS (
${raw}
)
SELECT
  r.date,
  r.media,
  COUNT(*) AS row_count,
  SUM(r.impressions) AS impressions,
  SUM(r.clicks) AS clicks,
  SUM(r.spend) AS spend,
  SUM(r.conversions) AS conversions
FROM raw AS r
GROUP BY r.date, r.media
ORDER BY r.date, r.media
