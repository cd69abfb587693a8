"""Ground truth of the simulated ad platforms: pure functions of (media, account, date, seed).

The simulators serve exactly these values (in each platform's wire format) and tests compare
what a connector normalized against them, so a fault or a retry can never change the truth.
Any account id is accepted; a few reserved ids trigger fixed behaviours for fault tests
(see ``RESERVED``). Campaign ids are stable across dates for one account, like on the real
platforms, so day-over-day aggregation in stage 2 sees the same campaigns.
"""

from __future__ import annotations

import hashlib
from datetime import date
from decimal import Decimal
from typing import Any

#: reserved account ids (digits only so that every platform accepts them as account ids)
EMPTY_ACCOUNT = "9990000001"  #: the account has no campaigns: an empty report
HOSTILE_ACCOUNT = "9990000002"  #: one campaign id is hostile (path/SQL characters) → DataError
DRIFT_ACCOUNT = "9990000003"  #: every data response has a renamed field (schema drift) → DataError
FAILING_ACCOUNT = "9990000004"  #: async jobs always fail (Google: always HTTP 500) → retriable forever
DENIED_ACCOUNT = "9990000005"  #: the token has no access to this account → AuthError
SLOW_ACCOUNT = "9990000006"  #: async jobs need many polls before they complete
PACIFIC_ACCOUNT = "9990000007"  #: reports in America/Los_Angeles (every other account: Asia/Tokyo)

RESERVED = {
    EMPTY_ACCOUNT: "no campaigns (empty report)",
    HOSTILE_ACCOUNT: "a campaign id with hostile characters",
    DRIFT_ACCOUNT: "renamed metric field in every data response",
    FAILING_ACCOUNT: "async job always fails (google_ads: always HTTP 500)",
    DENIED_ACCOUNT: "permission denied for this account",
    SLOW_ACCOUNT: "async job needs many polls",
    PACIFIC_ACCOUNT: "account time zone America/Los_Angeles",
}

HOSTILE_CAMPAIGN_ID = "../../etc/passwd'; DROP TABLE x;--"

#: per-media shape: currencies an account may have, spend precision (decimal places)
_CURRENCIES = {"meta": ("USD", "JPY", "EUR"), "google_ads": ("JPY", "USD"), "yahoo_ads": ("JPY",)}
_MAX_CAMPAIGNS = 8


def normalize_account(media: str, account: str) -> str:
    """The account id without platform decoration (Meta ``act_`` prefix, Google dashes)."""
    if media == "meta" and account.startswith("act_"):
        return account[4:]
    if media == "google_ads":
        return account.replace("-", "")
    return account


def account_timezone(media: str, account: str) -> str:
    """The IANA zone the platform reports for an account (Meta ``timezone_name``, Google
    ``customer.time_zone``); Yahoo! JAPAN accounts are all Asia/Tokyo."""
    if media != "yahoo_ads" and normalize_account(media, account) == PACIFIC_ACCOUNT:
        return "America/Los_Angeles"
    return "Asia/Tokyo"


def _h(*parts: Any) -> int:
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big")


def account_currency(media: str, account: str, seed: int) -> str:
    options = _CURRENCIES[media]
    return options[_h(seed, media, normalize_account(media, account), "currency") % len(options)]


def campaigns(media: str, account: str, seed: int) -> list[tuple[str, str]]:
    """(campaign_id, campaign_name) of an account: stable for every date."""
    acct = normalize_account(media, account)
    if acct == EMPTY_ACCOUNT:
        return []
    n = 1 + _h(seed, media, acct, "n") % _MAX_CAMPAIGNS
    out = []
    for k in range(n):
        base = _h(seed, media, acct, "cid", k)
        cid = {"meta": str(23850000000000000 + base % 10**13), "google_ads": str(10**9 + base % (9 * 10**9))}.get(
            media, str(10**7 + base % (9 * 10**7))
        )
        if acct == HOSTILE_ACCOUNT and k == 0:
            cid = HOSTILE_CAMPAIGN_ID
        # names carry commas, quotes and non-ASCII on purpose: CSV quoting and encodings are tested
        style = base % 4
        name = {
            0: f"Brand {k + 1}",
            1: f'Search "Generic", {k + 1}',
            2: f"キャンペーン{k + 1}・春",
            3: f"Retargeting {k + 1} / {acct[-4:]}",
        }[style]
        out.append((cid, name))
    return out


def truth_rows(media: str, account: str, day: date, seed: int, late_units: int = 0) -> list[dict[str, Any]]:
    """Canonical rows for one report: ids, name, ints, spend/conversions as exact Decimals.

    ``spend`` is in currency units (Google micros divided out; JPY has no minor unit),
    ``conversions`` as the platform reports them (Meta: integer action counts; Google and
    Yahoo: fractional values happen with data-driven attribution). ``late_units``: conversions
    that arrived after the day (booked to its clicks), added to every campaign with clicks —
    what the simulators' ``late_conversions`` setting restates.
    """
    currency = account_currency(media, account, seed)
    rows = []
    for k, (cid, name) in enumerate(campaigns(media, account, seed)):
        r = _h(seed, media, normalize_account(media, account), day.isoformat(), k)
        kind = r % 7
        impressions = 0 if kind == 0 else (r >> 8) % 50_000 + 1
        clicks = 0 if kind in (0, 1) else min(impressions, (r >> 24) % 2_000)
        if impressions == 0:
            spend_minor = 0
        else:
            spend_minor = (r >> 36) % 5_000_000 + 1
        if spend_minor == 0:
            spend = Decimal(0)
        elif currency == "JPY":
            spend = Decimal(spend_minor // 100)
        elif media == "google_ads":
            spend = Decimal(spend_minor * 10 + (r >> 13) % 10) / Decimal(1_000_000) * 100  # micros precision
            spend = spend.quantize(Decimal("0.000001"))
        else:
            spend = Decimal(spend_minor) / Decimal(100)
        conv_units = 0 if clicks == 0 else (r >> 50) % 40 + late_units
        if media == "meta":
            conversions = Decimal(conv_units)
        else:
            conversions = Decimal(conv_units) / Decimal(4)  # exact in binary: 0.25 steps
        rows.append(
            {
                "campaign_id": cid,
                "campaign_name": name,
                "impressions": impressions,
                "clicks": clicks,
                "spend": spend,
                "conversions": conversions,
                "currency": currency,
            }
        )
    return rows


def truth_json(media: str, account: str, day: date, seed: int, late_units: int = 0) -> list[dict[str, Any]]:
    """``truth_rows`` with Decimals as strings (what ``GET /_sim/truth`` returns)."""
    return [
        {**row, "spend": format(row["spend"], "f"), "conversions": format(row["conversions"], "f")}
        for row in truth_rows(media, account, day, seed, late_units)
    ]
