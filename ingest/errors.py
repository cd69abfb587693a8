"""The one exception taxonomy of the service.

Errors are grouped by what the caller should do, not by where they came from:

- ``RetriableError``: try again later (``Throttled`` carries the server's ``retry_after``
  hint in seconds; ``Transient`` covers 5xx/outages/dropped connections; ``Timeout``).
- ``FatalError``: retrying cannot help (``AuthError``, ``BadRequest``, ``DataError`` for
  malformed/truncated bodies and schema drift).
- ``ConfigError``: the operator's input is wrong; the CLI exits 2 before anything starts.

Every error is picklable (they cross Ray process boundaries) and carries the report it
belongs to (media, account, date), the HTTP status and a *truncated* body. No error ever
holds a token or a full URL: connectors pass paths, and ``redact`` scrubs what slips in.
"""

from __future__ import annotations

import re
from typing import Any

BODY_LIMIT = 2000

_SECRET_PATTERNS = [
    # query strings: access_token=, refresh_token=, token=, client_secret=, api_key=, key=
    re.compile(r"((?:\b[A-Za-z_]*token|client_secret|api_key|\bkey|password)=)[^&\s\"'<>]+", re.I),
    re.compile(r"(Bearer\s+)[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"(OAuth\s+)[A-Za-z0-9._~+/=-]+", re.I),
    re.compile(r"(Basic\s+)[A-Za-z0-9+/=]{8,}", re.I),
    # headers and JSON/dict forms: Authorization: X, "developer-token": "X", 'access_token': 'X'
    re.compile(r"((?:authorization|developer[-_]token|access[-_]token|refresh[-_]token|client[-_]secret|x-api-key)"
               r"[\"']?\s*[:=]\s*[\"']?)(?!\*\*\*|Bearer\s|OAuth\s|Basic\s)[^\s\"',}&]+", re.I),
    # URLs with credentials: scheme://user:password@host
    re.compile(r"(://[^/:@\s]+:)[^@/\s]+(?=@)"),
]

#: exact credential values this process has seen (``Secret`` registers itself): scrubbed wherever they appear
_KNOWN_SECRETS: set[str] = set()


def register_secret(value: str) -> None:
    """Remember a credential's exact value so ``redact`` removes it even where no pattern matches."""
    if value and len(value) >= 6:
        _KNOWN_SECRETS.add(value)


def redact(text: str) -> str:
    """Remove anything that looks like a credential (or is a known one) from free text."""
    for value in sorted(tuple(_KNOWN_SECRETS), key=len, reverse=True):  # a copy: another thread may register
        if value in text:
            text = text.replace(value, "***")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(r"\1***", text)
    return text


def truncate(body: str | bytes | None, limit: int = BODY_LIMIT) -> str | None:
    if body is None:
        return None
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    body = redact(body)
    return body if len(body) <= limit else body[:limit] + f"...[{len(body) - limit} more chars]"


class IngestError(Exception):
    """Base of every error this service raises on purpose."""

    #: short stable name stored in the ledger and used by the retry decision table
    kind: str = "error"

    def __init__(
        self,
        message: str,
        *,
        media: str | None = None,
        account: str | None = None,
        date: str | None = None,
        status: int | None = None,
        body: str | bytes | None = None,
        code: str | None = None,
    ) -> None:
        self.message = redact(message)
        self.media = media
        self.account = account
        self.date = date
        self.status = status
        self.body = truncate(body)
        self.code = code
        super().__init__(self.message)

    def _kwargs(self) -> dict[str, Any]:
        return {
            "media": self.media,
            "account": self.account,
            "date": self.date,
            "status": self.status,
            "body": self.body,
            "code": self.code,
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword-only args do not pickle by default; Ray needs them to.
        return (_rebuild, (type(self), self.message, self._kwargs(), self.__dict__))

    def with_report(self, media: str, account: str, date: str) -> IngestError:
        """Attach the report identity (connectors may raise before they know it)."""
        self.media = self.media or media
        self.account = self.account or account
        self.date = self.date or date
        return self

    def __str__(self) -> str:
        where = "/".join(x for x in (self.media, self.account, self.date) if x)
        parts = [f"{self.kind}: {self.message}"]
        if where:
            parts.append(f"[{where}]")
        if self.status is not None:
            parts.append(f"(HTTP {self.status})")
        if self.code:
            parts.append(f"code={self.code}")
        return " ".join(parts)


def _rebuild(cls: type[IngestError], message: str, kwargs: dict[str, Any], state: dict[str, Any]) -> IngestError:
    obj = cls.__new__(cls)
    IngestError.__init__(obj, message, **kwargs)
    obj.__dict__.update(state)
    return obj


class RetriableError(IngestError):
    kind = "retriable"


class Throttled(RetriableError):
    """The platform asked us to slow down; ``retry_after`` is its hint in seconds, if any.

    ``scope`` says what the limit covers, as the platform tells it: ``"account"`` (Meta 17, 613,
    80000–80014; Google ``rateScope: ACCOUNT``) pauses that account only; ``"app"`` (Meta 4,
    Google ``DEVELOPER``, Yahoo's per-application limit) pauses the whole media.
    """

    kind = "throttled"

    def __init__(self, message: str, *, retry_after: float | None = None, scope: str = "app", **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after = retry_after
        self.scope = scope


class Transient(RetriableError):
    kind = "transient"


class Timeout(RetriableError):
    kind = "timeout"


class Malformed(RetriableError):
    """A 200 whose body is cut or not parseable (truncated JSON, a CSV with a cut last line):
    proxies and resets do that, and a re-read usually succeeds. Retried a bounded number of
    times (each body kept in GCS); then the report fails as DataError. Schema drift — a body
    that parses but lacks a field — is a DataError at once."""

    kind = "malformed"


class JobFailed(RetriableError):
    """The platform says the async report job itself failed or expired (Meta ``Job Failed`` /
    ``Job Skipped``, Yahoo ``FAILED``, an expired run id or cursor): the only case where the
    whole report starts again, as a new job."""

    kind = "job_failed"


class FatalError(IngestError):
    kind = "fatal"


class AuthError(FatalError):
    kind = "auth"


class BadRequest(FatalError):
    kind = "bad_request"


class DataError(FatalError):
    """Malformed, truncated or drifted payload: the raw body is kept, the report fails."""

    kind = "data"


class ConfigError(IngestError):
    """Bad operator input (config file, CLI argument). Exit code 2, nothing started."""

    kind = "config"


class StageError(IngestError):
    """A stage-2 step (BigQuery load/query, RDB publish, reconciliation) failed."""

    kind = "stage"
