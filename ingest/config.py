"""Pipeline configuration: one YAML file, validated completely before anything starts.

Secrets never live in the file: a media names the *environment variables* that hold its
credentials (``credentials: {access_token: META_ACCESS_TOKEN}``) and they are read at use.
Every name that will reach a GCS path or a SQL identifier is checked against a strict
pattern here, so a hostile value is rejected, never escaped.
"""

from __future__ import annotations

import json
import os
import re
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator

from ingest.errors import ConfigError

NAME_RE = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
ACCOUNT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{1,61}[a-z0-9]$")
PROJECT_RE = re.compile(r"^[a-z][a-z0-9-]{4,28}[a-z0-9]$")
ENV_RE = re.compile(r"^[A-Z_][A-Z0-9_]*$")

#: connectors that exist; a media block must name one of these (see ingest/media/registry.py)
KNOWN_CONNECTORS = ("meta", "google_ads", "yahoo_ads")


def _check(pattern: re.Pattern[str], what: str) -> Any:
    def check(value: str) -> str:
        if not pattern.fullmatch(value):
            raise ValueError(f"{what} {value!r} is not allowed (must match {pattern.pattern})")
        return value

    return AfterValidator(check)


Name = Annotated[str, _check(NAME_RE, "name")]
AccountId = Annotated[str, _check(ACCOUNT_RE, "account id")]
Bucket = Annotated[str, _check(BUCKET_RE, "bucket name")]
Project = Annotated[str, _check(PROJECT_RE, "project id")]
EnvName = Annotated[str, _check(ENV_RE, "environment variable name")]


def check_name(value: str, what: str = "name") -> str:
    """Validate a media/table/dataset name coming from outside the config file."""
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise ConfigError(f"{what} {value!r} is not allowed (must match {NAME_RE.pattern})")
    return value


def check_account(value: str) -> str:
    """Validate an account id coming from the CLI or an API response."""
    if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
        raise ConfigError(f"account id {value!r} is not allowed (must match {ACCOUNT_RE.pattern})")
    return value


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RetrySettings(Strict):
    """Exponential backoff with full jitter; the server's hint wins when it gives one."""

    max_attempts: int = Field(5, ge=1, le=50, description="attempts of a whole report (a new report job each); "
                              "only a failed or expired platform job starts a report again")
    request_attempts: int = Field(10, ge=1, le=50, description="attempts of one request (create, poll, page, "
                                  "download, stream) before the report fails")
    retry_budget: int = Field(30, ge=0, le=1000, description="request retries per report, all requests together")
    malformed_attempts: int = Field(5, ge=1, le=20, description="reads of a cut/unparseable 200 body before the "
                                    "report fails as DataError (each body kept in GCS)")
    backoff_min_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(60.0, gt=0)
    multiplier: float = Field(2.0, ge=1)
    max_hint_s: float = Field(900.0, gt=0, description="never wait longer than this for a server hint")


class QuotaSettings(Strict):
    requests_per_second: float = Field(10.0, gt=0)
    burst: int = Field(5, ge=1)
    max_concurrent_jobs: int = Field(4, ge=1, description="async report jobs in flight at once")
    window_s: float = Field(1.0, gt=0, description="the window the platform counts requests_per_second in")
    arrival_jitter_s: float = Field(0.02, ge=0, le=1, description="how much the network may shift arrivals: any "
                                    "window of sends is kept 2 × this longer, so the platform never sees a burst "
                                    "we did not send (requests_per_second can equal the platform's quota)")
    late_send_s: float = Field(0.02, ge=0, le=1, description="where the rate binds (a queue of permits, a window "
                               "half full, the night's first window), a request whose first byte would leave more "
                               "than this long after its permit's send time (a busy process) sends nothing and "
                               "takes a new permit instead of going out late and bunched; windows of sends are "
                               "kept this much longer as well")
    poll_min_s: float = Field(0.2, gt=0)
    poll_max_s: float = Field(30.0, gt=0)
    pause_after_throttles: int = Field(
        3, ge=1, description="consecutive throttles (no success between) that pause the whole media by the hint")


class BreakerSettings(Strict):
    failure_threshold: int = Field(5, ge=1, description="distinct accounts (or app-wide throttles) failing within "
                                   "window_s that open it: one account's streak never does")
    window_s: float = Field(60.0, gt=0, description="how far back the breaker looks for that evidence")
    open_s: float = Field(30.0, gt=0, description="wait before one probe request")
    max_open_cycles: int = Field(4, ge=1, description="re-opens without a success before the media is given up")


class RestartSettings(Strict):
    """Erlang-style restart intensity for fetcher processes."""

    max_restarts: int = Field(5, ge=0)
    period_s: float = Field(60.0, gt=0)
    backoff_min_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(10.0, gt=0)


class AccountSettings(Strict):
    id: AccountId
    advertiser: Name
    timezone: str | None = Field(None, description="IANA zone the platform reports this account in; "
                                                   "unset: asked from the API once and remembered in the ledger")

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                ZoneInfo(v)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown time zone {v!r}") from None
        return v


class MediaSettings(Strict):
    """One ad platform. The mapping key is the media name used in paths and tables."""

    connector: Name
    base_url: str
    api_version: str | None = Field(None, pattern=r"^[A-Za-z0-9._-]+$",
                                    description="unset: the connector's default (its current version)")
    credentials: dict[Name, EnvName] = Field(default_factory=dict)
    token_url: str | None = Field(None, description="OAuth token endpoint for refresh-token credentials; "
                                                    "unset: the platform's real one")
    options: dict[str, Any] = Field(default_factory=dict)
    accounts: list[AccountSettings] = Field(min_length=1)
    lookback_days: int | None = Field(None, ge=0, le=90, description="days before yesterday the nightly refetches "
                                      "(late conversions); unset: the platform's documented window (Meta 28, "
                                      "Google Ads 30, Yahoo! JAPAN 30); 0: fetch yesterday only")
    fetchers: int | None = Field(None, ge=1, le=64, description="pin the number of fetcher processes; unset: sized "
                                 "from the night's work and quota (ingest/supervision/placement.py)")
    max_fetchers: int = Field(8, ge=1, le=64, description="upper bound on fetcher processes for this media")
    reports_per_fetcher: int = Field(200, ge=1, description="one more fetcher per this many reports in the night")
    fetcher_rps: float = Field(25.0, gt=0, description="requests/s one fetcher process sustains: no more fetchers "
                               "than quota.requests_per_second can feed")
    concurrency: int = Field(8, ge=1, le=256, description="reports in flight per fetcher")
    timeout_s: float = Field(30.0, gt=0)
    retry: RetrySettings = RetrySettings()
    quota: QuotaSettings = QuotaSettings()
    breaker: BreakerSettings = BreakerSettings()
    restarts: RestartSettings = RestartSettings()

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", v):
            raise ValueError(f"base_url {v!r} must be an http(s) URL without credentials or query")
        return v.rstrip("/")

    @field_validator("connector")
    @classmethod
    def _known(cls, v: str) -> str:
        if v not in KNOWN_CONNECTORS:
            raise ValueError(f"unknown connector {v!r} (known: {', '.join(KNOWN_CONNECTORS)})")
        return v

    @field_validator("accounts")
    @classmethod
    def _unique(cls, v: list[AccountSettings]) -> list[AccountSettings]:
        ids = [a.id for a in v]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"duplicate account ids: {', '.join(dupes)}")
        return v

    def account_ids(self) -> list[str]:
        return [a.id for a in self.accounts]


class GcsSettings(Strict):
    bucket: Bucket
    endpoint: str | None = Field(None, description="emulator URL; unset in production")


class BigQuerySettings(Strict):
    project: Project
    dataset: Name
    location: str = "US"
    endpoint: str | None = Field(None, description="emulator URL; unset in production")


class DatabaseSettings(Strict):
    url: str = Field(description="SQLAlchemy URL without password; overridden by url_env")
    url_env: EnvName | None = Field("DATABASE_URL", description="env var that, when set, wins")

    def resolved_url(self, base_dir: Path) -> str:
        url = (os.environ.get(self.url_env) if self.url_env else None) or self.url
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            rel = url[len("sqlite:///"):]
            if rel and rel != ":memory:":
                url = "sqlite:///" + str((base_dir / rel).resolve())
        return url


class RaySettings(Strict):
    address: str | None = Field(None, description="None: start a local Ray; 'auto': join the cluster")
    num_cpus: int | None = None
    fetcher_resource: Name | None = Field(
        None, description="cluster profile: the custom resource only worker node types carry (ray-cluster.yaml); "
                          "each fetcher takes one unit and supervisors stay on the head. Unset: one machine")


class NotifySettings(Strict):
    """Slack-compatible incoming-webhook notifications (end of every run, breaker opened).

    The webhook URL is a secret (whoever has it can post): only the *name* of the
    environment variable holding it lives here. Unset variable = notifications off.
    """

    webhook_url_env: EnvName = "INGEST_WEBHOOK_URL"
    ui_base_url: str | None = Field(None, description="where `python -m ingest ui` is reachable; messages link to it")
    timeout_s: float = Field(5.0, gt=0, le=60)
    max_attempts: int = Field(4, ge=1, le=10, description="posts of one message when the webhook fails transiently "
                              "(connection error, timeout, HTTP 429/5xx); a 4xx is not retried")
    retry_within_s: float = Field(30.0, gt=0, le=300, description="no retry starts later than this after the first "
                                  "post: a message never holds up the end of a run for long")
    backoff_min_s: float = Field(1.0, ge=0, le=60, description="first wait between posts (doubling, full jitter)")
    max_failed_items: int = Field(10, ge=0, le=50, description="failed reports listed in a message")

    @field_validator("ui_base_url")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        if v is not None and not re.fullmatch(r"https?://[A-Za-z0-9.\-\[\]:]+(/[A-Za-z0-9._~/-]*)?", v):
            raise ValueError(f"ui_base_url {v!r} must be an http(s) URL without credentials or query")
        return v.rstrip("/") if v else v


class UiSettings(Strict):
    """``python -m ingest ui``: the read-only run history page."""

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    token_env: EnvName = Field("INGEST_UI_TOKEN", description="access token; required when not bound to loopback")
    page_size: int = Field(50, ge=5, le=500)


class SandboxSettings(Strict):
    """Where the local stack listens and what the simulators inject (local profile only)."""

    root: str = ".sandbox"
    gcs_port: int = 4443
    bq_port: int = 9050
    bq_grpc_port: int = 9060
    sim_ports: dict[Name, int] = Field(default_factory=dict)
    fault_rate: float = Field(0.0, ge=0, le=1)
    latency_ms: float = Field(5.0, ge=0)
    seed: int = 7


class PipelineConfig(Strict):
    project: Project
    timezone: str = "Asia/Tokyo"
    max_backfill_days: int = Field(93, ge=1)
    run_deadline_s: float = Field(4 * 3600, gt=0)
    lock_stale_s: float = Field(
        600, gt=0, description="a run's partition locks go stale after this long without a heartbeat"
    )
    gcs: GcsSettings
    bigquery: BigQuerySettings
    database: DatabaseSettings
    ray: RaySettings = RaySettings()
    notify: NotifySettings = NotifySettings()
    ui: UiSettings = UiSettings()
    media: dict[Name, MediaSettings] = Field(min_length=1)
    sandbox: SandboxSettings | None = None
    #: directory of the config file; relative paths (SQLite, sandbox root) resolve against it
    base_dir: str = "."

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    # -- derived ------------------------------------------------------------------------
    def yesterday(self, now: datetime | None = None) -> date:
        now = now or datetime.now(ZoneInfo(self.timezone))
        return (now.astimezone(ZoneInfo(self.timezone)) - timedelta(days=1)).date()

    def today(self) -> date:
        return datetime.now(ZoneInfo(self.timezone)).date()

    def database_url(self) -> str:
        return self.database.resolved_url(Path(self.base_dir))

    def sandbox_root(self) -> Path:
        root = Path(self.sandbox.root if self.sandbox else ".sandbox")
        return root if root.is_absolute() else (Path(self.base_dir) / root).resolve()

    def advertiser_of(self) -> dict[tuple[str, str], str]:
        return {(m, a.id): a.advertiser for m, s in self.media.items() for a in s.accounts}

    def media_names(self) -> list[str]:
        return list(self.media)


DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "config" / "local.yaml"


def _field_path(loc: tuple[Any, ...]) -> str:
    return ".".join(str(p) for p in loc) or "(top level)"


def load_config(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> PipelineConfig:
    """Read and validate a config file; every problem becomes one ConfigError naming file and field."""
    path = Path(path or os.environ.get("INGEST_CONFIG") or DEFAULT_CONFIG)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    raw.setdefault("base_dir",
                   str(path.resolve().parent.parent if path.parent.name == "config" else path.resolve().parent))
    if overrides:
        raw = _merge(raw, overrides)
    return follow_local_stack(parse_config(raw, source=str(path)))


def follow_local_stack(cfg: PipelineConfig) -> PipelineConfig:
    """Local profile only: when this checkout's local stack runs on other ports than the config's
    ``sandbox`` ones (another checkout's stack held them), point the endpoints at the ports its
    ``stack.json`` records. Endpoints that do not use a configured sandbox port are left alone."""
    if cfg.sandbox is None:
        return cfg
    try:
        recorded = json.loads((cfg.sandbox_root() / "stack.json").read_text()).get("spec", {})
    except (OSError, ValueError):
        return cfg
    moves = {cfg.sandbox.gcs_port: recorded.get("gcs_port"), cfg.sandbox.bq_port: recorded.get("bq_port")}
    moves.update({port: recorded.get("sim_ports", {}).get(m) for m, port in cfg.sandbox.sim_ports.items()})
    moves = {a: b for a, b in moves.items() if isinstance(b, int) and a != b}
    if not moves:
        return cfg

    def moved(url: str | None) -> str | None:
        if url is None:
            return url
        m = re.match(r"^(https?://127\.0\.0\.1:)(\d+)(.*)$", url)
        if not m or int(m.group(2)) not in moves:
            return url
        return f"{m.group(1)}{moves[int(m.group(2))]}{m.group(3)}"

    media = {name: s.model_copy(update={"base_url": moved(s.base_url), "token_url": moved(s.token_url)})
             for name, s in cfg.media.items()}
    return cfg.model_copy(update={
        "media": media,
        "gcs": cfg.gcs.model_copy(update={"endpoint": moved(cfg.gcs.endpoint)}),
        "bigquery": cfg.bigquery.model_copy(update={"endpoint": moved(cfg.bigquery.endpoint)}),
        "sandbox": cfg.sandbox.model_copy(update={
            "gcs_port": recorded.get("gcs_port", cfg.sandbox.gcs_port),
            "bq_port": recorded.get("bq_port", cfg.sandbox.bq_port),
            "bq_grpc_port": recorded.get("bq_grpc_port", cfg.sandbox.bq_grpc_port),
            "sim_ports": {**cfg.sandbox.sim_ports, **recorded.get("sim_ports", {})}}),
    })


def parse_config(raw: dict[str, Any], source: str = "<config>", today: date | None = None) -> PipelineConfig:
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "missing":
                msg = "required field is missing"
            elif err["type"] == "extra_forbidden":
                msg = "unknown field"
            lines.append(f"{source}: {_field_path(err['loc'])}: {msg}")
        raise ConfigError("\n".join(lines)) from None
    return check_connectors(cfg, source, today or cfg.today())


#: credentials that replace a static ``access_token`` where the connector can refresh one
REFRESH_CREDENTIALS = ("refresh_token", "client_id", "client_secret")


def check_connectors(cfg: PipelineConfig, source: str, today: date) -> PipelineConfig:
    """What only the connectors know, checked at load: API version against its sunset,
    credential names, options. Returns the config with each media's version resolved."""
    import structlog

    from ingest.media.base import ConnectorSettings
    from ingest.media.registry import connector_class
    from ingest.media.versions import check_version

    errors: list[str] = []
    media: dict[str, MediaSettings] = {}
    for name, settings in cfg.media.items():
        cls = connector_class(settings.connector)
        where = f"{source}: media.{name}"
        check = check_version(cls.versions, settings.api_version or cls.default_version, today, cls.platform)
        if check.error:
            errors.append(f"{where}.api_version: {check.error}")
        elif check.warning:
            structlog.get_logger("ingest.config").warning("api_version_sunset_soon", media=name, detail=check.warning)
        errors += [f"{where}.credentials: {e}" for e in _credential_problems(cls, settings)]
        unknown = sorted(set(settings.options) - cls.option_names)
        if unknown:
            errors.append(f"{where}.options.{unknown[0]}: unknown option "
                          f"(known: {', '.join(sorted(cls.option_names))})")
        else:
            try:  # the connector's own checks of option values, run here instead of inside an actor
                cls(ConnectorSettings(name, settings.base_url, check.version, {}, dict(settings.options)))
            except ConfigError as exc:
                errors.append(f"{where}.options: {exc.message}")
        lookback = cls.late_window_days if settings.lookback_days is None else settings.lookback_days
        media[name] = settings.model_copy(update={"api_version": check.version, "lookback_days": lookback})
    if errors:
        raise ConfigError("\n".join(errors))
    return cfg.model_copy(update={"media": media})


def _credential_problems(cls: Any, settings: MediaSettings) -> list[str]:
    given = set(settings.credentials)
    needed = set(cls.credential_names)
    refreshable = cls.token_url is not None
    problems = []
    if refreshable and given & set(REFRESH_CREDENTIALS):
        missing_refresh = [c for c in REFRESH_CREDENTIALS if c not in given]
        if missing_refresh:
            problems.append(f"refresh-token credentials need {', '.join(REFRESH_CREDENTIALS)}; "
                            f"missing {', '.join(missing_refresh)}")
        if "access_token" in given:
            problems.append("give either access_token or refresh_token/client_id/client_secret, not both")
        needed.discard("access_token")
    missing = sorted(needed - given)
    if missing:
        alt = " (or refresh_token, client_id, client_secret)" if refreshable and "access_token" in missing else ""
        problems.append(f"missing {', '.join(missing)}{alt}")
    allowed = set(cls.credential_names) | (set(REFRESH_CREDENTIALS) if refreshable else set())
    unknown = sorted(given - allowed)
    if unknown:
        problems.append(f"unknown credential {unknown[0]!r} (known: {', '.join(sorted(allowed))})")
    return problems


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out
