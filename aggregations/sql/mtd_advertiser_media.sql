-- Month-to-date per advertiser × media × currency as of @date: the days from the first of
-- @date's month through @date inclusive. The raw CTE is filtered to that range per media table.
WITH raw AS (
${raw}
),
mapped AS (
  SELECT r.*, COALESCE(a.advertiser, '(unmapped)') AS advertiser
  FROM raw AS r
  LEFT JOIN ${advertiser_accounts} AS a
    ON a.media = r.media AND a.account_id = r.account_id
),
per_advertiser_media AS (
  SELECT
    r.advertiser,
    r.media,
    r.currency,
    COUNT(DISTINCT r.date) AS days_with_data,
    SUM(r.impressions) AS impressions,
    SUM(r.clicks) AS clicks,
    SUM(r.spend) AS spend,
    SUM(r.conversions) AS conversions
  FROM mapped AS r
  GROUP BY r.advertiser, r.media, r.currency
)
SELECT
  @date AS as_of_date,
  p.advertiser,
  p.media,
  p.currency,
  p.days_with_data,
  p.impressions,
  p.clicks,
  p.spend,
  p.conversions,
  SAFE_DIVIDE(CAST(p.clicks AS FLOAT64), p.impressions) AS ctr,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64), p.clicks) AS cpc,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64) * 1000, p.impressions) AS cpm,
  SAFE_DIVIDE(CAST(p.spend AS FLOAT64), CAST(p.conversions AS FLOAT64)) AS cpa,
  SAFE_DIVIDE(CAST(p.conversions AS FLOAT64), p.clicks) AS cvr
FROM per_advertiser_media AS p
ORDER BY p.advertiser, p.media, p.currency
