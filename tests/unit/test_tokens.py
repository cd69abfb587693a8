"""Refresh-token credentials: the grant on the wire, the shared cache, and the 401 path."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import parse_qs

import httpx
import pytest

from ingest.errors import AuthError, Throttled, Transient
from ingest.media.base import HttpSession, Secret
from ingest.media.tokens import AccessToken, TokenCache, TokenRefresher

SECRETS = {"client_id": Secret("cid-123"), "client_secret": Secret("very-secret-cs"),
           "refresh_token": Secret("1//very-secret-rt")}


def refresher(style: str = "form", url: str = "https://oauth2.googleapis.com/token") -> TokenRefresher:
    return TokenRefresher("google_ads", url, style, **SECRETS)


class Endpoint:
    """A token endpoint: records what it was sent, answers from a script (then fresh tokens)."""

    def __init__(self, *script: httpx.Response, lifetime: float = 3599) -> None:
        self.script = list(script)
        self.lifetime = lifetime
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        if self.script:
            return self.script.pop(0)
        return httpx.Response(200, json={"access_token": f"ya29.tok{len(self.seen)}", "expires_in": self.lifetime,
                                         "token_type": "Bearer"})

    def client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(transport=httpx.MockTransport(self))


def test_google_style_posts_a_form_and_yahoo_style_sends_a_query() -> None:
    ep = Endpoint()

    async def go() -> tuple[AccessToken, AccessToken]:
        async with ep.client() as c:
            a = await refresher("form").refresh(c, now=lambda: 1000.0)
            b = await refresher("query", "https://biz-oauth.yahoo.co.jp/oauth/v1/token").refresh(c, now=lambda: 1000.0)
            return a, b

    a, b = asyncio.run(go())
    post, get = ep.seen
    assert post.method == "POST" and post.url.path == "/token"
    assert parse_qs(post.content.decode()) == {"grant_type": ["refresh_token"], "client_id": ["cid-123"],
                                               "client_secret": ["very-secret-cs"],
                                               "refresh_token": ["1//very-secret-rt"]}
    assert get.method == "GET" and get.url.path == "/oauth/v1/token"
    assert dict(get.url.params) == {"grant_type": "refresh_token", "client_id": "cid-123",
                                    "client_secret": "very-secret-cs", "refresh_token": "1//very-secret-rt"}
    assert a.value.get() == "ya29.tok1" and a.expires_at == 1000.0 + 3599
    assert repr(a.value) == "Secret(***)"


@pytest.mark.parametrize(("response", "error", "words"), [
    (httpx.Response(400, json={"error": "invalid_grant", "error_description": "Token has been expired or revoked."}),
     AuthError, ["google_ads: token refresh refused by oauth2.googleapis.com (HTTP 400) "
                 "invalid_grant: Token has been"]),
    (httpx.Response(401, json={"error": "invalid_client", "error_description": "The OAuth client was not found."}),
     AuthError, ["invalid_client"]),
    (httpx.Response(503, text="busy"), Transient, ["HTTP 503"]),
    (httpx.Response(429, json={"error": "rate_limit_exceeded"}), Throttled, ["throttled"]),
    (httpx.Response(200, json={"token_type": "Bearer"}), Transient, ["failed"]),
])
def test_refusals_are_fatal_auth_errors_and_glitches_retriable(response: httpx.Response, error: type[Exception],
                                                               words: list[str]) -> None:
    async def go() -> None:
        async with Endpoint(response).client() as c:
            await refresher().refresh(c)

    with pytest.raises(error) as err:
        asyncio.run(go())
    text = str(err.value)
    for word in words:
        assert word in text
    for secret in ("very-secret-cs", "1//very-secret-rt", "cid-123"):
        assert secret not in text


def test_cache_shares_one_token_refreshes_before_expiry_and_after_a_401() -> None:
    now = [1000.0]
    ep = Endpoint(lifetime=3600)
    cache = TokenCache(refresher(), client_factory=ep.client, clock=lambda: now[0])

    async def go() -> list[str]:
        seen = [t.value.get() for t in await asyncio.gather(*(cache.get() for _ in range(20)))]  # 20 fetchers at once
        now[0] += 3000  # 10 minutes left: still fresh (margin 2 min)
        seen.append((await cache.get()).value.get())
        now[0] += 500   # 100 s left: refreshed ahead of expiry
        seen.append((await cache.get()).value.get())
        seen.append((await cache.get(rejected="ya29.tok2")).value.get())  # a 401 for the current token
        seen.append((await cache.get(rejected="ya29.tok2")).value.get())  # a late 401 for an old one: no refresh
        return seen

    seen = asyncio.run(go())
    assert seen[:21] == ["ya29.tok1"] * 21
    assert seen[21:] == ["ya29.tok2", "ya29.tok3", "ya29.tok3"]
    assert len(ep.seen) == 3 and cache.refreshes == 3


def test_a_refused_refresh_is_remembered_not_retried() -> None:
    ep = Endpoint(httpx.Response(400, json={"error": "invalid_grant"}))
    cache = TokenCache(refresher(), client_factory=ep.client)

    async def go() -> list[BaseException]:
        return list(await asyncio.gather(*(cache.get() for _ in range(5)), return_exceptions=True))

    errors = asyncio.run(go())
    assert all(isinstance(e, AuthError) for e in errors)
    assert len(ep.seen) == 1  # one refusal is enough for the whole night


def test_session_uses_the_bearer_and_refreshes_once_on_401() -> None:
    calls: list[str | None] = []
    tokens = iter(["old", "new", "newer"])

    async def bearer(rejected: str | None) -> str:
        calls.append(rejected)
        return next(tokens) if rejected is not None or not calls[:-1] else "old"

    seen: list[str] = []

    def api(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers["Authorization"])
        return httpx.Response(401 if request.headers["Authorization"] == "Bearer old" else 200, json={})

    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as c:
            session = HttpSession(c, bearer=bearer)
            response = await session.request("GET", "https://api.example/x", headers={"Authorization": "Bearer static"})
            assert session.requests == 2 and len(session.pages) == 2  # both exchanges kept for the raw object
            return response

    assert asyncio.run(go()).status_code == 200
    assert seen == ["Bearer old", "Bearer new"]
    assert calls == [None, "old"]


def test_a_401_for_the_same_token_again_is_returned_to_the_connector() -> None:
    async def bearer(rejected: str | None) -> str:
        return "t1" if rejected is None else "t2"

    async def go() -> int:
        async with httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(401, json={}))) as c:
            session = HttpSession(c, bearer=bearer)
            response = await session.request("GET", "https://api.example/x")
            assert session.requests == 3  # t1 rejected, t2 rejected, t2 again: the cache has nothing newer
            return response.status_code

    assert asyncio.run(go()) == 401  # the connector classifies it (AuthError): no loop


def test_a_refreshed_token_revoked_before_the_retry_earns_one_more_and_no_more() -> None:
    # another request refreshed t2 seconds ago and the platform revoked it since: t3 is asked for
    async def bearer(rejected: str | None) -> str:
        return {None: "t1", "t1": "t2", "t2": "t3", "t3": "t4"}[rejected]

    def go(good: str) -> tuple[int, list[str]]:
        seen: list[str] = []

        def api(request: httpx.Request) -> httpx.Response:
            seen.append(request.headers["Authorization"])
            return httpx.Response(200 if request.headers["Authorization"] == f"Bearer {good}" else 401, json={})

        async def send() -> int:
            async with httpx.AsyncClient(transport=httpx.MockTransport(api)) as c:
                return (await HttpSession(c, bearer=bearer).request("GET", "https://api.example/x")).status_code
        return asyncio.run(send()), seen

    assert go("t3") == (200, ["Bearer t1", "Bearer t2", "Bearer t3"])
    assert go("t4") == (401, ["Bearer t1", "Bearer t2", "Bearer t3"])  # bounded: bad credentials never loop


def test_static_tokens_keep_the_connectors_header(monkeypatch: Any) -> None:
    from ingest.media.base import ConnectorSettings

    static = ConnectorSettings("m", "http://x", "v1", {"access_token": Secret("abc")})
    refreshing = ConnectorSettings("m", "http://x", "v1", dict(SECRETS))
    assert static.bearer_header() == {"Authorization": "Bearer abc"}
    assert refreshing.bearer_header() == {}  # HttpSession sets it from the token cache
    with pytest.raises(AuthError):
        ConnectorSettings("m", "http://x", "v1", {}).bearer_header()
