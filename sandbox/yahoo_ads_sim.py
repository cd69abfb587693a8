"""Yahoo! JAPAN Ads Search Ads API simulator: ReportDefinitionService add → get → download.

Wire format follows the official fixtures in tests/fixtures/official/yahoo_ads (built from
github.com/yahoojp-marketing/ads-search-api-documents: design/v20/reportdefinition/*.yaml,
reports/v20/jp/CAMPAIGN.csv, bestpractice/en/search_ads_report.md, errorcodes.md):
envelope ``{errors, rid, rval{totalNumEntries, values[{operationSucceeded, errors,
reportDefinition}]}}``; job status WAIT / IN_PROGRESS / COMPLETED / FAILED; the download is a
CSV whose header holds the official display names of the requested fields in the requested
``reportLanguage`` (JA when not given, as in the API), followed by the documented summary row
(metric totals, attribute/segment columns empty, no label) unless ``reportSkipReportSummary``
is TRUE. Errors per design/Response4xx/5xx.yaml: 401 0110/0111, 403 0098 (permission) and
0003 (frequency limit), 500 0002, 503 0099. A version outside ``LIVE_VERSIONS`` gets 404 with
the common code 0004 "URL not found." (the docs do not document a retired version's answer;
this is our stand-in, see the fixtures' README). Formats here never come from ``ingest``.
"""

from __future__ import annotations

import csv
import io
import re
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from aiohttp import web

from sandbox.simcore import Ctx, SimulatedError, Simulator, json_response
from sandbox.truth import FAILING_ACCOUNT, SLOW_ACCOUNT

#: report field → (Japanese, English) display name, from reports/v20/jp/CAMPAIGN.csv
DISPLAY_NAMES = {
    "DAY": ("日", "Day"),
    "ACCOUNT_ID": ("アカウントID", "Account ID"),
    "CAMPAIGN_ID": ("キャンペーンID", "CampaignID"),
    "CAMPAIGN_NAME": ("キャンペーン名", "Campaign name"),
    "IMPS": ("インプレッション数", "Impressions"),
    "CLICKS": ("クリック数", "Clicks"),
    "COST": ("コスト", "Cost"),
    "CONVERSIONS": ("コンバージョン数", "Conversions"),
}
#: "Metric" rows of CAMPAIGN.csv; every other field is empty in the summary row
#: (except ACCOUNT_ID, which the v6 migration guide says keeps the account)
METRICS = ("IMPS", "CLICKS", "COST", "CONVERSIONS")
#: about four versions live at once (design/v17 … design/v20 in the docs repository)
LIVE_VERSIONS = ("v17", "v18", "v19", "v20")
_YMD = re.compile(r"^\d{8}$")


def _envelope(errors: list[dict[str, Any]] | None = None, rval: Any = None, status: int = 200) -> web.Response:
    return json_response({"errors": errors, "rid": secrets.token_hex(16), "rval": rval}, status=status)


def _err(code: str, message: str, details: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    return {"code": code, "message": message, "details": details or []}


class YahooAdsSimulator(Simulator):
    media = "yahoo_ads"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/{ver}/ReportDefinitionService/{op}", self.report_service),
            web.post("/api/{ver}/ReportDefinitionService/{op}", self.report_service),
        ]

    def auth_error(self, request: web.Request, missing: bool) -> web.Response:
        if missing:
            return _envelope([_err("0110", "Require access token.")], status=401)
        return _envelope([_err("0111", "Authentication failed.")], status=401)

    def denied_error(self, request: web.Request, account: str) -> web.Response:
        return _envelope([_err("0098", "Permission denied.")], status=403)

    def throttle_error(self, request: web.Request, scope: str, account: str, wait_s: float) -> web.Response:
        return _envelope([_err("0003", "Frequency limit exceeded. Please try your request again later.")], status=403)

    def server_error(self, request: web.Request, down: bool = False) -> web.Response:
        if down:
            return _envelope([_err("0099", "Out of service.")], status=503)
        return _envelope([_err("0002", "An internal error has occurred.")], status=500)

    async def report_service(self, request: web.Request) -> web.StreamResponse:
        op = request.match_info["op"]
        if request.match_info["ver"] not in LIVE_VERSIONS:
            return _envelope([_err("0004", "URL not found.")], status=404)
        try:
            body = await request.json()
        except ValueError:
            body = None
        account = str(body.get("accountId", "")) if isinstance(body, dict) else ""

        async def handle(ctx: Ctx) -> web.Response:
            if not isinstance(body, dict) or not account.isdigit():
                raise SimulatedError(
                    _envelope([_err("0001", "Invalid Request.", [{"requestKey": "accountId"}])], status=400))
            if not request.headers.get("x-z-base-account-id", "").isdigit():
                raise SimulatedError(
                    _envelope([_err("R0001", "Require.", [{"requestKey": "x-z-base-account-id"}])], status=400)
                )
            if op == "add":
                return self._add(account, body, ctx)
            if op == "get":
                return self._get(account, body)
            if op == "download":
                return self._download(account, body, ctx)
            raise SimulatedError(_envelope([_err("0004", "URL not found.")], status=404))

        return await self.serve(
            request, f"ReportDefinitionService/{op}", account, handle, data=op == "download", job_create=op == "add"
        )

    def _definition(self, job_id: str) -> dict[str, Any]:
        job = self.jobs[job_id]
        op = job["operand"]
        return {
            "accountId": int(job["account"]),
            "completeTime": job.get("complete_time"),
            "dateRange": op.get("dateRange"),
            "fields": op["fields"],
            "reportCompressType": op.get("reportCompressType", "NONE"),
            "reportDateRangeType": op["reportDateRangeType"],
            "reportDownloadEncode": op.get("reportDownloadEncode", "UTF8"),
            "reportDownloadFormat": op.get("reportDownloadFormat", "CSV"),
            "reportIncludeDeleted": op.get("reportIncludeDeleted", "TRUE"),
            "reportJobErrorDetail": "Report creation failed." if job["status"] == "FAILED" else None,
            "reportJobId": int(job_id),
            "reportJobStatus": job["status"],
            "reportLanguage": op.get("reportLanguage", "JA"),
            "reportName": op["reportName"],
            "reportSkipColumnHeader": op.get("reportSkipColumnHeader", "FALSE"),
            "reportSkipReportSummary": op.get("reportSkipReportSummary", "FALSE"),
            "reportDecimalPartDisplayType": op.get("reportDecimalPartDisplayType", "SIMPLE_DISPLAY"),
            "reportType": op["reportType"],
            "requestTime": job["request_time"],
        }

    def _add(self, account: str, body: dict[str, Any], ctx: Ctx) -> web.Response:
        operands = body.get("operand")
        if not isinstance(operands, list) or len(operands) != 1 or not isinstance(operands[0], dict):
            return _envelope([_err("L0001", "Lower list size.", [{"requestKey": "operand"}])])
        op = operands[0]
        errors = []
        for key in ("reportName", "reportType", "fields", "reportDateRangeType"):
            if not op.get(key):
                errors.append(_err("R0001", "Require.", [{"requestKey": key}]))
        unknown = [f for f in op.get("fields") or [] if f not in DISPLAY_NAMES]
        if unknown:
            errors.append(_err("V0001", "Invalid value.", [{"requestKey": "fields", "requestValue": unknown[0]}]))
        dr = op.get("dateRange") or {}
        if op.get("reportDateRangeType") != "CUSTOM_DATE":
            errors.append(_err("V0001", "Invalid value.", [{"requestKey": "reportDateRangeType"}]))
        else:
            for key in ("startDate", "endDate"):
                if not _YMD.match(str(dr.get(key, ""))):
                    errors.append(_err("F0001", "Invalid format.", [{"requestKey": f"dateRange/{key}",
                                                                     "requestValue": str(dr.get(key))}]))
        if op.get("reportType") not in (None, "CAMPAIGN"):
            errors.append(_err("V0001", "Invalid value.", [{"requestKey": "reportType"}]))
        if errors:
            return _envelope(None, {"values": [{"errors": errors, "operationSucceeded": False,
                                                "reportDefinition": None}]})
        job_id = self.next_job_id(2_568_000_000)
        polls = self.config.job_polls * (4 if account == SLOW_ACCOUNT else 1)
        self.jobs[job_id] = {
            "account": account,
            "operand": op,
            "polls": 0,
            "needed": max(1, polls),
            "failed": ctx.job_failed or account == FAILING_ACCOUNT,
            "status": "WAIT",
            "request_time": datetime.now().strftime("%Y/%m/%d %H:%M:%S"),
        }
        self.stats_["jobs_created"] += 1
        return _envelope(None, {"values": [{"errors": None, "operationSucceeded": True,
                                            "reportDefinition": self._definition(job_id)}]})

    def _get(self, account: str, body: dict[str, Any]) -> web.Response:
        ids = body.get("reportJobIds") or []
        values = []
        for raw in ids:
            job_id = str(raw)
            job = self.jobs.get(job_id)
            if job is None or job["account"] != account:
                values.append({"errors": [_err("V0001", "Invalid value.", [{"requestKey": "reportJobIds",
                                                                           "requestValue": job_id}])],
                               "operationSucceeded": False, "reportDefinition": None})
                continue
            job["polls"] += 1
            if job["failed"]:
                job["status"] = "FAILED"
            elif job["polls"] >= job["needed"]:
                job["status"] = "COMPLETED"
                job.setdefault("complete_time", datetime.now().strftime("%Y/%m/%d %H:%M:%S"))
            else:
                job["status"] = "IN_PROGRESS"
            values.append({"errors": None, "operationSucceeded": True, "reportDefinition": self._definition(job_id)})
        return _envelope(None, {"totalNumEntries": len(values), "values": values})

    def _download(self, account: str, body: dict[str, Any], ctx: Ctx) -> web.Response:
        job_id = str(body.get("reportJobId", ""))
        job = self.jobs.get(job_id)
        if job is None or job["account"] != account:
            raise SimulatedError(
                _envelope([_err("V0001", "Invalid value.", [{"requestKey": "reportJobId"}])], status=400))
        if job["status"] != "COMPLETED":
            raise SimulatedError(
                _envelope([_err("S0001", "Invalid Status.", [{"requestKey": "reportJobId"}])], status=400))
        op = job["operand"]
        fields = op["fields"]
        start = datetime.strptime(op["dateRange"]["startDate"], "%Y%m%d").date()
        end = datetime.strptime(op["dateRange"]["endDate"], "%Y%m%d").date()
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        lang = 1 if op.get("reportLanguage") == "EN" else 0
        header = [DISPLAY_NAMES[f][lang] for f in fields]
        if ctx.drift:
            header = [h + "(JPY)" if f == "COST" else h for f, h in zip(fields, header, strict=True)]
        writer.writerow(header)
        totals: dict[str, Any] = {f: Decimal(0) for f in METRICS}
        day = start
        while day <= end:
            for t in self.truth(account, day):
                values = {
                    "DAY": day.isoformat(),
                    "ACCOUNT_ID": account,
                    "CAMPAIGN_ID": t["campaign_id"],
                    "CAMPAIGN_NAME": t["campaign_name"],
                    "IMPS": t["impressions"],
                    "CLICKS": t["clicks"],
                    "COST": t["spend"],
                    "CONVERSIONS": t["conversions"],
                }
                for k in totals:
                    totals[k] += values[k]
                writer.writerow([_cell(values[f]) for f in fields])
            day = date.fromordinal(day.toordinal() + 1)
        if op.get("reportSkipReportSummary", "FALSE") != "TRUE":
            summary = {**totals, "ACCOUNT_ID": account}
            writer.writerow([_cell(summary[f]) if f in summary else "" for f in fields])
        if not ctx.drift:
            self.stats_["served_reports"] += 1
        return web.Response(body=buf.getvalue().encode("utf-8"), content_type="text/csv", charset="utf-8")


def _cell(value: Any) -> str:
    if isinstance(value, Decimal):
        return format(value, "f")
    return str(value)
