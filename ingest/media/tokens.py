"""Access tokens bought with a refresh token (OAuth 2.0 ``refresh_token`` grant, RFC 6749 §6).

Google Ads and Yahoo! JAPAN Ads access tokens live an hour (``expires_in`` ≈ 3599/3600 s), so a
night that starts an hour after a token was minted, or runs longer than an hour, needs fresh
ones. ``TokenRefresher`` talks to the platform's token endpoint (Google: a form POST to
oauth2.googleapis.com/token; Yahoo: biz-oauth.yahoo.co.jp/oauth/v1/token with the parameters
in the query, as the official Java library sends them). ``TokenCache`` lives in the media's
supervisor and is shared by all of its fetchers: one refresh at a time, before expiry, and
once more when a fetcher reports a 401 for the token it was given.

google-auth's ``Credentials`` would refresh only through ``requests``/urllib3, synchronously;
this is the same grant over the httpx client the connectors already use.

A refused refresh (``invalid_grant``, ``invalid_client``) is an ``AuthError`` naming the media
and the platform's reason, remembered for the run: no retry loop against the token endpoint.
Secrets never reach a message: only the endpoint's host and the OAuth error code/description.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import httpx

from ingest.errors import AuthError, Throttled, Timeout, Transient
from ingest.media.base import Secret

#: refresh this long before the platform's expiry (or a tenth of a short lifetime)
REFRESH_MARGIN_S = 120.0


@dataclass(frozen=True, slots=True)
class AccessToken:
    value: Secret
    #: epoch seconds after which the platform no longer accepts it
    expires_at: float
    issued_at: float

    def fresh(self, now: float) -> bool:
        """Not within the refresh margin of its expiry: ``REFRESH_MARGIN_S``, or a tenth of a
        short lifetime (tests and simulators use lifetimes of seconds)."""
        margin = min(REFRESH_MARGIN_S, (self.expires_at - self.issued_at) / 10)
        return now < self.expires_at - margin


class TokenRefresher:
    """One refresh-token grant against the platform's token endpoint."""

    def __init__(self, media: str, token_url: str, style: str, *, client_id: Secret, client_secret: Secret,
                 refresh_token: Secret) -> None:
        if style not in ("form", "query"):
            raise ValueError(f"token style must be 'form' or 'query', not {style!r}")
        self.media = media
        self.token_url = token_url
        self.style = style
        self._params = {"grant_type": "refresh_token", "client_id": client_id, "client_secret": client_secret,
                        "refresh_token": refresh_token}

    @property
    def host(self) -> str:
        return urlsplit(self.token_url).netloc

    async def refresh(self, client: httpx.AsyncClient, now: Callable[[], float] = time.time) -> AccessToken:
        params: dict[str, str] = {k: (v.get() if isinstance(v, Secret) else str(v)) for k, v in self._params.items()}
        started = now()
        try:
            if self.style == "form":
                response = await client.post(self.token_url, data=params, headers={"Accept": "application/json"})
            else:
                response = await client.get(self.token_url, params=params, headers={"Accept": "application/json"})
        except httpx.TimeoutException:
            raise Timeout(f"{self.media}: token endpoint {self.host} timed out") from None
        except httpx.TransportError as exc:
            raise Transient(f"{self.media}: token endpoint {self.host} unreachable ({type(exc).__name__})") from None
        return self._parse(response, started)

    def _parse(self, response: httpx.Response, started: float) -> AccessToken:
        status = response.status_code
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        if status == 200 and isinstance(body, dict) and isinstance(body.get("access_token"), str):
            try:
                lifetime = float(body.get("expires_in", 3600))
            except (TypeError, ValueError):
                lifetime = 3600.0
            return AccessToken(Secret(body["access_token"]), started + lifetime, started)
        reason = ""
        if isinstance(body, dict):
            reason = ": ".join(str(body[k]) for k in ("error", "error_description") if body.get(k))
        reason = reason[:200] or f"HTTP {status}"
        if status == 429:
            raise Throttled(f"{self.media}: token endpoint {self.host} throttled: {reason}", status=status)
        if status >= 500 or status == 200:  # 200 without a token: a broken answer, ask again later
            raise Transient(f"{self.media}: token endpoint {self.host} failed: {reason}", status=status)
        raise AuthError(f"{self.media}: token refresh refused by {self.host} (HTTP {status}) {reason}; "
                        f"check the refresh token and client credentials", status=status)


class TokenCache:
    """The media's current access token, shared by its fetchers (lives in the supervisor)."""

    def __init__(self, refresher: TokenRefresher, client_factory: Callable[[], httpx.AsyncClient] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.refresher = refresher
        self._client_factory = client_factory or (lambda: httpx.AsyncClient(timeout=30))
        self._client: httpx.AsyncClient | None = None
        self.clock = clock
        self._token: AccessToken | None = None
        self._lock = asyncio.Lock()
        self._refused: AuthError | None = None
        self.refreshes = 0

    async def get(self, rejected: str | None = None) -> AccessToken:
        """A token that is not about to expire; a new one when ``rejected`` is the current one (401)."""
        async with self._lock:  # one refresh at a time: the others wait for its result
            if self._refused is not None:
                raise self._refused
            token = self._token
            stale = token is None or (rejected is not None and token.value.get() == rejected)
            if token is not None and not stale and token.fresh(self.clock()):
                return token
            if self._client is None:
                self._client = self._client_factory()
            try:
                self._token = await self.refresher.refresh(self._client, self.clock)
            except AuthError as exc:
                self._refused = exc
                raise
            self.refreshes += 1
            return self._token

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


def token_cache_for(media: str, token_url: str | None, style: str, secrets: dict[str, Secret]) -> TokenCache | None:
    """A cache when the media is configured with refresh-token credentials, else None (static token)."""
    if "refresh_token" not in secrets or token_url is None:
        return None
    return TokenCache(TokenRefresher(media, token_url, style, client_id=secrets["client_id"],
                                     client_secret=secrets["client_secret"], refresh_token=secrets["refresh_token"]))

