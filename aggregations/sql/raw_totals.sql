-- Reconciliation: row count and metric sums per media in the raw tables for @date.
-- The raw CTE: UNION ALL over the media tables filtered to @date (rendered from the config).
WITH raw AS (
${raw}
)
SELECT
  r.media,
  COUNT(*) AS row_count,
  SUM(r.impressions) AS impressions,
  SUM(r.clicks) AS clicks,
  SUM(r.spend) AS spend,
  SUM(r.conversions) AS conversions
FROM raw AS r
GROUP BY r.media
ORDER BY r.media
