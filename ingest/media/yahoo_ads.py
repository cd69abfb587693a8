"""Yahoo! JAPAN Ads Search Ads API: ReportDefinitionService add → get (poll) → download CSV.

Flow per (account, day or range): ``add`` a CAMPAIGN report for ``CUSTOM_DATE`` first..last (CSV,
UTF8, uncompressed, ``reportSkipReportSummary: TRUE``) → ``reportJobId``; ``get`` until
``reportJobStatus`` is COMPLETED (WAIT / IN_PROGRESS keep polling, via
``HttpSession.poll_wait``); ``download`` the CSV. The CSV header holds the official display
names of the requested fields in the requested ``reportLanguage`` (option ``report_language``,
JA by default, as in the API), taken from the official field list ``reports/v20/jp/CAMPAIGN.csv``
(e.g. EN ``CampaignID``, ``Campaign name``; JA ``キャンペーンID``, ``キャンペーン名``); a missing
column is schema drift (DataError). We ask the API to skip the summary row; should one come
anyway it is recognised as documented — metric totals with every attribute/segment column
empty and no label — and skipped.

Decisions: a job ending FAILED is Transient — the job failed on the platform's side and a
retry creates a fresh job; repeated failures exhaust the supervisor's attempts and the
report fails with the platform's ``reportJobErrorDetail`` as reason. Currency is the
account's (JPY unless the ``currency`` option says otherwise; the report has no currency
column). Cost is in currency units.

Only fields of the v20 ``ReportDefinition`` are sent (``reportIncludeZeroImpressions`` was
removed in v6: zero rows are always included).

Sources: github.com/yahoojp-marketing/ads-search-api-documents (reports/v20/jp/CAMPAIGN.csv,
bestpractice/en/search_ads_report.md, bestpractice/en/errorcodes.md,
design/Response4xx/5xx.yaml, design/v20/reportdefinition/*.yaml) and
ads-search-api-python-samples/report_sample.py; fixtures in tests/fixtures/official/yahoo_ads.
"""

from __future__ import annotations

import csv
import io
import json
from datetime import date, datetime
from typing import Any, ClassVar

import httpx

from ingest.config import ACCOUNT_RE
from ingest.errors import (
    AuthError,
    BadRequest,
    ConfigError,
    DataError,
    IngestError,
    JobFailed,
    Malformed,
    Throttled,
    Transient,
)
from ingest.media.base import Connector, ConnectorSettings, HttpSession, Row, parse_decimal, parse_int, parse_json
from ingest.media.versions import ApiVersion

FIELDS = ("DAY", "CAMPAIGN_ID", "CAMPAIGN_NAME", "IMPS", "CLICKS", "COST", "CONVERSIONS")
#: report field → CSV column header per reportLanguage: the official display names
#: ("英語表示名称/English Display Name", "日本語表示名称/Japanese Display Name") of
#: ads-search-api-documents reports/v20/jp/CAMPAIGN.csv
COLUMNS_BY_LANGUAGE = {
    "EN": {
        "DAY": "Day",
        "CAMPAIGN_ID": "CampaignID",
        "CAMPAIGN_NAME": "Campaign name",
        "IMPS": "Impressions",
        "CLICKS": "Clicks",
        "COST": "Cost",
        "CONVERSIONS": "Conversions",
    },
    "JA": {
        "DAY": "日",
        "CAMPAIGN_ID": "キャンペーンID",
        "CAMPAIGN_NAME": "キャンペーン名",
        "IMPS": "インプレッション数",
        "CLICKS": "クリック数",
        "COST": "コスト",
        "CONVERSIONS": "コンバージョン数",
    },
}
#: the API's default reportLanguage (design/v20/reportdefinition/ReportDefinitionServiceReportLanguage.yaml)
DEFAULT_LANGUAGE = "JA"
#: attribute/segment columns: all empty in the documented summary (total) row
NON_METRIC = ("DAY", "CAMPAIGN_ID", "CAMPAIGN_NAME")
#: error codes (errorcodes.md, Response4xx/5xx.yaml)
THROTTLE_CODES = frozenset({"0003"})  # Frequency limit exceeded (HTTP 403)
TRANSIENT_CODES = frozenset({"0002", "0099"})  # internal error (500), out of service (503)
AUTH_CODES = frozenset({"0110", "0111", "0112", "0113", "0114", "0098"})  # token/account/permission
RUNNING = frozenset({"WAIT", "IN_PROGRESS"})


_YAHOO_SOURCE = "yahoojp-marketing/ads-search-api-documents (README: supported API versions, end-of-support schedule)"
#: About four versions live at once, each retired in two stages (end of support, then system
#: end); the report fields and header names here follow v20's official field list only.
VERSIONS = (
    ApiVersion("v17", None, None, _YAHOO_SOURCE, supported=False),
    ApiVersion("v18", None, None, _YAHOO_SOURCE, supported=False),
    ApiVersion("v19", None, None, _YAHOO_SOURCE, supported=False),
    ApiVersion("v20", None, None, _YAHOO_SOURCE),
)
DEFAULT_VERSION = "v20"

def check_id(value: Any, what: str) -> str:
    """An id from a response must look like one: it reaches GCS paths and SQL."""
    if not isinstance(value, str) or not ACCOUNT_RE.fullmatch(value):
        raise DataError(f"{what} {str(value)[:80]!r} is not a valid id")
    return value


def classify(status: int, errors: list[Any], headers: httpx.Headers, raw: bytes) -> IngestError:
    """Envelope ``errors[].code`` first (0003 is a throttle even at HTTP 403), then the status."""
    codes = [str(e.get("code")) for e in errors if isinstance(e, dict) and e.get("code") is not None]
    first = next((e for e in errors if isinstance(e, dict)), {})
    msg = str(first.get("message") or f"HTTP {status}")
    kw: dict[str, Any] = {"status": status, "body": raw, "code": ",".join(codes[:3]) or None}
    if status == 429 or THROTTLE_CODES.intersection(codes):
        try:
            retry_after = float(headers["retry-after"]) if headers.get("retry-after") else None
        except ValueError:
            retry_after = None
        return Throttled(f"frequency limit: {msg}", retry_after=retry_after, **kw)
    if TRANSIENT_CODES.intersection(codes) or status >= 500:
        return Transient(msg, **kw)
    if AUTH_CODES.intersection(codes) or status in (401, 403):
        return AuthError(msg, **kw)
    return BadRequest(msg, **kw)


def _parse_day(value: str) -> date | None:
    for fmt in ("%Y-%m-%d", "%Y/%m/%d", "%Y%m%d"):
        try:
            return datetime.strptime(value, fmt).date()
        except ValueError:
            continue
    return None


class YahooAdsConnector(Connector):
    name: ClassVar[str] = "yahoo_ads"
    credential_names: ClassVar[tuple[str, ...]] = ("access_token",)
    platform = "Yahoo! JAPAN Search Ads API"
    versions = VERSIONS
    default_version = DEFAULT_VERSION
    fixed_timezone = "Asia/Tokyo"  # every Yahoo! JAPAN Ads account reports in JST
    option_names = frozenset({"base_account_id", "currency", "max_polls", "report_language"})
    token_url = "https://biz-oauth.yahoo.co.jp/oauth/v1/token"
    token_style = "query"

    def __init__(self, settings: ConnectorSettings) -> None:
        super().__init__(settings)
        opts = settings.options
        base = opts.get("base_account_id")
        self.base_account_id = None if base is None else str(base)
        if self.base_account_id is not None and not self.base_account_id.isdigit():
            raise ConfigError(f"yahoo_ads option base_account_id must be digits, not {base!r}")
        self.currency = opts.get("currency", "JPY")
        self.max_polls = opts.get("max_polls", 60)
        self.report_language = opts.get("report_language", DEFAULT_LANGUAGE)
        if self.report_language not in COLUMNS_BY_LANGUAGE:
            raise ConfigError(f"yahoo_ads option report_language must be EN or JA, not {self.report_language!r}")
        self.columns = COLUMNS_BY_LANGUAGE[self.report_language]
        if not (isinstance(self.currency, str) and len(self.currency) == 3 and self.currency.isupper()):
            raise ConfigError(f"yahoo_ads option currency must be an ISO 4217 code, not {self.currency!r}")
        if not isinstance(self.max_polls, int) or isinstance(self.max_polls, bool) or self.max_polls < 1:
            raise ConfigError(f"yahoo_ads option max_polls must be a positive integer, not {self.max_polls!r}")

    @classmethod
    def uses_report_jobs(cls, options: dict[str, Any]) -> bool:
        return True  # every report is a ReportDefinitionService job: add → get (poll) → download

    def minimum_requests(self) -> int:
        return 3  # add + one get + download

    def _url(self, op: str) -> str:
        return f"{self.settings.base_url.rstrip('/')}/{self.settings.api_version}/ReportDefinitionService/{op}"

    def _headers(self, account: str) -> dict[str, str]:
        return {
            **self.settings.bearer_header(),
            "x-z-base-account-id": self.base_account_id or account,
        }

    async def _post(self, http: HttpSession, op: str, account: str, body: dict[str, Any]) -> httpx.Response:
        response = await http.request("POST", self._url(op), json_body=body, headers=self._headers(account))
        if response.status_code != 200:
            raise classify(response.status_code, self._errors(response), response.headers, response.content)
        return response

    @staticmethod
    def _errors(response: httpx.Response) -> list[Any]:
        try:
            body = json.loads(response.content)
        except ValueError:
            return []
        errors = body.get("errors") if isinstance(body, dict) else None
        return errors if isinstance(errors, list) else []

    async def _envelope(
        self, http: HttpSession, what: str, op: str, account: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        """POST and return the single ``rval.values[0]``, as one retriable step."""
        return await http.step(what, lambda: self._envelope_once(http, op, account, body))

    async def _envelope_once(self, http: HttpSession, op: str, account: str, body: dict[str, Any]) -> dict[str, Any]:
        """POST and return the single ``rval.values[0]`` (Full and Part errors classified)."""
        response = await self._post(http, op, account, body)
        env = parse_json(response)  # a cut body: Malformed, read again (only 200s get here)
        if not isinstance(env, dict):
            raise DataError("envelope is not a JSON object", status=200, body=response.content)
        if env.get("errors"):  # "Full Error": HTTP 200, whole request refused
            raise classify(200, env["errors"] if isinstance(env["errors"], list) else [], response.headers,
                           response.content)
        values = (env.get("rval") or {}).get("values") if isinstance(env.get("rval"), dict) else None
        if not isinstance(values, list) or len(values) != 1 or not isinstance(values[0], dict):
            raise DataError("expected exactly one rval.values entry", status=200, body=response.content)
        value = values[0]
        if value.get("operationSucceeded") is not True:  # "Part Error"
            errs: list[Any] = value["errors"] if isinstance(value.get("errors"), list) else []
            raise classify(200, errs, response.headers, response.content)
        definition = value.get("reportDefinition")
        if not isinstance(definition, dict):
            raise DataError("rval.values[0] has no reportDefinition", status=200, body=response.content)
        if "accountId" in definition and str(definition["accountId"]) != account:
            raise DataError(f"report of account {str(definition['accountId'])[:40]!r} for {account!r}")
        return definition

    #: conversions are restated within a conversion-measurement period of 7–90 days; 30 covers
    #: the common setting (the media's ``lookback_days`` follows the account's own period)
    late_window_days = 30

    async def fetch(self, http: HttpSession, account: str, day: date, last: date | None = None) -> list[Row]:
        last = last or day
        try:
            if not account.isdigit():
                raise BadRequest(f"Yahoo! JAPAN Ads account id must be digits, not {account!r}")
            ymd, last_ymd = day.strftime("%Y%m%d"), last.strftime("%Y%m%d")
            operand = {
                "reportName": f"ingest-{account}-{ymd}" + (f"-{last_ymd}" if last != day else ""),
                "reportType": "CAMPAIGN",
                "fields": list(FIELDS),
                "reportDateRangeType": "CUSTOM_DATE",
                "dateRange": {"startDate": ymd, "endDate": last_ymd},
                "reportDownloadFormat": "CSV",
                "reportDownloadEncode": "UTF8",
                "reportLanguage": self.report_language,
                "reportCompressType": "NONE",
                "reportIncludeDeleted": "TRUE",
                "reportSkipReportSummary": "TRUE",
                # all decimals, not the default 4-place SIMPLE_DISPLAY: conversions stay exact
                "reportDecimalPartDisplayType": "FULL_DISPLAY",
            }
            added = await self._envelope(http, "add", "add", account,
                                         {"accountId": int(account), "operand": [operand]})
            job_id = added.get("reportJobId")
            if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
                raise DataError(f"reportJobId {str(job_id)[:40]!r} is not a positive integer")
            await self._wait(http, account, job_id)
            download = {"accountId": int(account), "reportJobId": job_id}

            async def fetch_csv() -> list[Row]:  # the download and the parse of its CSV: one retriable step
                return self._parse_csv(await self._post(http, "download", account, download), account, day, last)

            return await http.step("download", fetch_csv)
        except IngestError as exc:
            raise exc.with_report(self.media, account, day.isoformat()) from None

    async def _wait(self, http: HttpSession, account: str, job_id: int) -> None:
        for polls in range(self.max_polls):
            await http.poll_wait(polls)
            definition = await self._envelope(http, f"poll {polls + 1}", "get", account,
                                              {"accountId": int(account), "reportJobIds": [job_id]})
            status = definition.get("reportJobStatus")
            if status == "COMPLETED":
                return
            if status == "FAILED":
                detail = definition.get("reportJobErrorDetail") or "no detail"
                raise JobFailed(f"report job {job_id} FAILED: {detail}", code="FAILED", body=json.dumps(definition))
            if status not in RUNNING:
                raise DataError(f"unknown reportJobStatus {str(status)[:40]!r}", body=json.dumps(definition))
        raise JobFailed(f"report job {job_id} not complete after {self.max_polls} polls", code="poll_limit")

    def _parse_csv(self, response: httpx.Response, account: str, day: date, last: date | None = None) -> list[Row]:
        raw = response.content
        if raw.lstrip()[:1] == b"{":  # an error envelope served with 200 instead of the CSV
            errors = self._errors(response)
            if errors:
                raise classify(200, errors, response.headers, raw)
        try:
            text = raw.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            if exc.start >= len(raw) - 3:  # a multi-byte character cut at the end: the body was cut
                raise Malformed(f"report CSV cut inside a character: {exc}", body=raw) from None
            raise DataError(f"report is not UTF-8: {exc}", body=raw) from None
        try:
            records = list(csv.reader(io.StringIO(text)))
        except csv.Error as exc:
            raise Malformed(f"malformed CSV (cut inside a quoted cell?): {exc}", body=raw) from None
        records = [r for r in records if any(cell.strip() for cell in r)]
        if not records:
            raise DataError("report CSV is empty (no header row)", body=raw)
        header = [h.strip() for h in records[0]]
        columns = self.columns
        missing = [name for name in columns.values() if name not in header]
        if missing and len(records) == 1 and not raw.endswith(b"\n"):  # cut inside the header line itself
            raise Malformed(f"report CSV cut in its header line after {len(raw)} bytes", body=raw)
        if missing:
            raise DataError(f"report CSV lacks column(s) {', '.join(missing)} (schema drift?); "
                            f"header: {header}", body=raw)
        col = {field: header.index(name) for field, name in columns.items()}
        rows = []
        # a report ends with a newline: a last line without one was cut, so whatever fails to
        # parse in it is a cut body (read again), not drift
        unterminated = not raw.endswith(b"\n")
        for n, record in enumerate(records[1:], start=2):
            try:
                row = self._row(record, header, col, account, day, raw, last or day)
            except DataError as exc:
                if n == len(records) and unterminated:
                    raise Malformed(f"report CSV cut in its last line: {exc.message}", body=raw) from None
                raise
            if row is not None:
                rows.append(row)
        return rows

    def _row(self, record: list[str], header: list[str], col: dict[str, int], account: str, day: date,
             raw: bytes, last: date) -> Row | None:
        """One CSV line as a Row; None for the documented summary row (totals, no attributes)."""
        if len(record) != len(header):
            raise DataError(f"CSV row has {len(record)} cells, header has {len(header)}", body=raw)
        if not any(record[col[f]].strip() for f in NON_METRIC):
            return None
        row_day = _parse_day(record[col["DAY"]].strip())
        if row_day is None or not day <= row_day <= last:
            span = str(day) if last == day else f"{day}..{last}"
            raise DataError(f"row for {record[col['DAY']][:20]!r} in a report for {span}", body=raw)
        return Row(
            date=row_day,
            media=self.media,
            account_id=account,
            campaign_id=check_id(record[col["CAMPAIGN_ID"]].strip(), "campaign id"),
            campaign_name=record[col["CAMPAIGN_NAME"]],
            impressions=parse_int(record[col["IMPS"]].strip(), "Impressions"),
            clicks=parse_int(record[col["CLICKS"]].strip(), "Clicks"),
            spend=parse_decimal(record[col["COST"]].strip(), "Cost"),
            conversions=parse_decimal(record[col["CONVERSIONS"]].strip(), "Conversions"),
            currency=self.currency,
        )
