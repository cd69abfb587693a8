"""The platforms' OAuth token endpoints, simulated: access tokens that really expire.

Google (``POST https://oauth2.googleapis.com/token``, form body) and Yahoo! JAPAN
(``https://biz-oauth.yahoo.co.jp/oauth/v1/token``, parameters in the query as the official
Java library sends them) both implement the RFC 6749 §6 ``refresh_token`` grant and answer
``{"access_token", "expires_in", "token_type": "Bearer"}``; a refused grant is HTTP 400
``{"error": "invalid_grant", "error_description": ...}`` (401 ``invalid_client`` for a bad
client). Issued tokens start with ``ISSUED_PREFIX`` and are rejected by the API simulators
once ``token_lifetime_s`` has passed, so the pipeline must refresh them to finish a night.
Static tokens (anything else, e.g. ``sandbox-token``) keep working, except ``revoked``.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from aiohttp import web

ISSUED_PREFIX = "sim-at-"
#: refresh tokens / client secrets the endpoint refuses (for tests of the refusal path)
REVOKED_REFRESH_TOKEN = "revoked-refresh-token"
WRONG_CLIENT_SECRET = "wrong-client-secret"
#: where each platform's token endpoint lives (path on the simulator) and how it takes parameters
TOKEN_ENDPOINTS = {"google_ads": ("/token", "form"), "yahoo_ads": ("/oauth/v1/token", "query")}


class TokenIssuer:
    def __init__(self, lifetime_s: float, reported_lifetime_s: float = 0.0) -> None:
        self.lifetime_s = lifetime_s
        self.reported_lifetime_s = reported_lifetime_s
        self._seq = itertools.count(1)
        self._expiry: dict[str, float] = {}
        self.stats: dict[str, int] = {"tokens_issued": 0, "refresh_refused": 0, "expired_token_rejections": 0}

    def valid(self, token: str) -> bool:
        """Static tokens are valid (the simulators' default); issued ones until they expire."""
        if not token.startswith(ISSUED_PREFIX):
            return True
        ok = self._expiry.get(token, 0.0) > time.time()
        if not ok:
            self.stats["expired_token_rejections"] += 1
        return ok

    async def handle(self, request: web.Request) -> web.Response:
        params: dict[str, Any] = dict(request.query)
        if request.method == "POST":
            params.update(dict(await request.post()))
        if params.get("grant_type") != "refresh_token":
            return _error(400, "unsupported_grant_type", "grant_type must be refresh_token")
        if (not params.get("client_id") or not params.get("client_secret")
                or params["client_secret"] == WRONG_CLIENT_SECRET):
            self.stats["refresh_refused"] += 1
            return _error(401, "invalid_client", "The OAuth client was not found.")
        if not params.get("refresh_token") or params["refresh_token"] == REVOKED_REFRESH_TOKEN:
            self.stats["refresh_refused"] += 1
            return _error(400, "invalid_grant", "Token has been expired or revoked.")
        token = f"{ISSUED_PREFIX}{next(self._seq)}-{int(time.time() * 1000)}"
        self._expiry[token] = time.time() + self.lifetime_s
        self.stats["tokens_issued"] += 1
        announced = self.reported_lifetime_s or self.lifetime_s
        return web.json_response({"access_token": token, "expires_in": announced, "token_type": "Bearer"})


def _error(status: int, code: str, description: str) -> web.Response:
    return web.json_response({"error": code, "error_description": description}, status=status)
