-- Daily metrics per advertiser across all media for each date @first..@last, one row per currency:
-- JPY and USD are never summed together, so currency is part of the key.
-- The raw CTE: UNION ALL over the media tables filtered to @date (rendered from the config).
WITH raw AS (
${raw}
),
mapped AS (
  SELECT r.*, COALESCE(a.advertiser, '(unmapped)') AS advertiser
  FROM raw AS r
  LEFT JOIN ${advertiser_accounts} AS a
    ON a.media = r.media AND a.account_id = r.account_id
),
per_advertiser AS (
  SELECT
    r.date,
    r.advertiser,
    r.currency,
    COUNT(DISTINCT r.media) AS media_count,
    COUNT(DISTINCT CONCAT(r.media, '/', r.account_id, '/', r.campaign_id)) AS campaign_count,
    SUM(r.impressions) AS impressions,
    SUM(r.clicks) AS clicks,
    SUM(r.spend) AS spend,
    SUM(r.conversions) AS conversions
  FROM mapped AS r
  GROUP BY r.date, r.advertiser, r.currency
)
SELECT
  p.date,
  p.advertiser,
  p.currency,
  p.media_count,
  p.campaign_count,
  p.impressions,
  p.clicks,
  p.spend,
  p.conversions,
  SAFE_DIVIDE(CAST(p.clicks AS FLOAT64), p.impressions) AS ctr,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64), p.clicks) AS cpc,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64) * 1000, p.impressions) AS cpm,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64), CAST(p.conversions AS FLOAT64)) AS cpa,
  SAFE_DIVIDE(CAST(p.conversions AS FLOAT64), p.clicks) AS cvr
FROM per_advertiser AS p
ORDER BY p.advertiser, p.currency
