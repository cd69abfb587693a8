-- Daily metrics per media × account × campaign for each date @first..@last, with the account's advertiser.
-- The raw CTE is rendered from the config: one `SELECT ... FROM raw_{media} WHERE <date filter>`
-- per media table joined by UNION ALL (table names pass ingest.config.check_name first).
-- Spend/conversions stay exact NUMERIC; KPIs are FLOAT64 and NULL when the divisor is zero.
WITH raw AS (
${raw}
),
per_campaign AS (
  SELECT
    r.date,
    r.media,
    r.account_id,
    r.campaign_id,
    MAX(r.campaign_name) AS campaign_name,
    r.currency,
    COUNT(*) AS raw_rows,
    SUM(r.impressions) AS impressions,
    SUM(r.clicks) AS clicks,
    SUM(r.spend) AS spend,
    SUM(r.conversions) AS conversions
  FROM raw AS r
  GROUP BY r.date, r.media, r.account_id, r.campaign_id, r.currency
)
SELECT
  c.date,
  c.media,
  c.account_id,
  c.campaign_id,
  COALESCE(a.advertiser, '(unmapped)') AS advertiser,
  c.campaign_name,
  c.currency,
  c.raw_rows,
  c.impressions,
  c.clicks,
  c.spend,
  c.conversions,
  SAFE_DIVIDE(CAST(c.clicks AS FLOAT64), c.impressions) AS ctr,
  SAFE_DIVIDE(CAST(c.spend AS FLOAT64), c.clicks) AS cpc,
  SAFE_DIVIDE(CAST(c.spend AS FLOAT64) * 1000, c.impressions) AS cpm,
  SAFE_DIVIDE(CAST(c.spend AS FLOAT64), CAST(c.conversions AS FLOAT64)) AS cpa,
  SAFE_DIVIDE(CAST(c.conversions AS FLOAT64), c.clicks) AS cvr
FROM per_campaign AS c
LEFT JOIN ${advertiser_accounts} AS a
  ON a.media = c.media AND a.account_id = c.account_id
ORDER BY c.media, c.account_id, c.campaign_id
