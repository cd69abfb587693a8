"""Each account's time zone, so that "yesterday" is the account's own yesterday.

Platforms count a report's day in the account's zone (Meta ``timezone_name``, Google
``customer.time_zone``; Yahoo! JAPAN is always Asia/Tokyo). A nightly run at 03:00 in Tokyo is
still the previous afternoon in Los Angeles: a Pacific account's "yesterday" is a day earlier,
and fetching Tokyo's yesterday for it would read a day that is not over.

Where a zone comes from, first match wins: the account's ``timezone`` in the config → the
ledger (remembered from an earlier lookup) → the connector's fixed zone → one API lookup per
account, remembered in the ledger. A lookup that fails falls back to the config's top-level
``timezone`` for this run only, with a warning naming the account and the fix.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import httpx
import structlog

from ingest.config import PipelineConfig
from ingest.errors import IngestError
from ingest.ledger import Ledger
from ingest.media.base import HttpSession, Secret
from ingest.media.registry import connector_class
from ingest.media.tokens import token_cache_for
from ingest.supervision.fetcher import build_connector

log = structlog.get_logger("ingest.timezones")

AccountRef = tuple[str, str]


def local_yesterday(tz: str, now: datetime | None = None) -> date:
    zone = ZoneInfo(tz)
    return ((now or datetime.now(zone)).astimezone(zone) - timedelta(days=1)).date()


class AccountTimezones:
    def __init__(self, cfg: PipelineConfig, ledger: Ledger) -> None:
        self.cfg = cfg
        self.ledger = ledger

    def known(self, media: list[str]) -> tuple[dict[AccountRef, str], dict[str, list[str]]]:
        """The zones known without asking any API (config → ledger → fixed zone), and per media
        the accounts whose zone is not known yet."""
        zones: dict[AccountRef, str] = {}
        remembered = self.ledger.timezones()
        unknown: dict[str, list[str]] = {}
        for m in media:
            settings = self.cfg.media[m]
            fixed = connector_class(settings.connector).fixed_timezone
            for account in settings.accounts:
                ref = (m, account.id)
                tz = account.timezone or remembered.get(ref) or fixed
                if tz:
                    zones[ref] = tz
                else:
                    unknown.setdefault(m, []).append(account.id)
        return zones, unknown

    def resolve(self, media: list[str], secrets: dict[str, dict[str, Secret]]) -> dict[AccountRef, str]:
        zones, unknown = self.known(media)
        if unknown:
            found = asyncio.run(self._look_up(unknown, secrets))
            self.ledger.remember_timezones(found)
            zones.update(found)
            for m, account_ids in unknown.items():
                for account_id in account_ids:
                    if (m, account_id) not in zones:
                        zones[(m, account_id)] = self.cfg.timezone
        return zones

    def yesterday(self, media: list[str], secrets: dict[str, dict[str, Secret]],
                  now: datetime | None = None) -> dict[AccountRef, date]:
        return {ref: local_yesterday(tz, now) for ref, tz in self.resolve(media, secrets).items()}

    async def _look_up(
        self, unknown: dict[str, list[str]], secrets: dict[str, dict[str, Secret]]
    ) -> dict[AccountRef, str]:
        results = await asyncio.gather(
            *(self._look_up_media(m, accounts, secrets[m]) for m, accounts in unknown.items())
        )
        return {ref: tz for part in results for ref, tz in part.items()}

    async def _look_up_media(
        self, media: str, accounts: list[str], secrets: dict[str, Secret]
    ) -> dict[AccountRef, str]:
        """One request per account, spaced by the media's quota: it runs once per new account."""
        settings = self.cfg.media[media]
        connector = build_connector(media, settings, secrets)
        cls = connector_class(settings.connector)
        tokens = token_cache_for(media, settings.token_url or cls.token_url, cls.token_style, secrets)

        async def bearer(rejected: str | None) -> str:
            assert tokens is not None
            return (await tokens.get(rejected)).value.get()

        found: dict[AccountRef, str] = {}
        async with httpx.AsyncClient(timeout=settings.timeout_s) as client:
            for account in accounts:
                session = HttpSession(client, bearer=bearer if tokens is not None else None)
                try:
                    tz = await connector.account_timezone(session, account)
                    if tz:
                        ZoneInfo(tz)
                        found[(media, account)] = tz
                except (IngestError, ZoneInfoNotFoundError, ValueError) as exc:
                    log.warning("account_timezone_unknown", media=media, account=account,
                                fallback=self.cfg.timezone, reason=str(exc)[:300],
                                fix=f"set media.{media}.accounts[].timezone for {account} in the config")
                await asyncio.sleep(1 / settings.quota.requests_per_second)
        if tokens is not None:
            await tokens.close()
        log.info("account_timezones_looked_up", media=media, found=len(found), asked=len(accounts))
        return found
