"""Meta Marketing API (Graph) insights simulator: sync paging and async report runs.

Wire format follows developers.facebook.com/docs/marketing-api/insights (and the
``facebook-python-business-sdk`` ``AdReportRun`` object): metrics are *strings*,
``paging.cursors`` is on every non-empty page and only ``paging.next`` means more; throttles
are HTTP 400 with ``error.code`` 80000 (ad account, subcode 2446079) or 4 (app); usage is
reported in ``x-business-use-case-usage``, ``x-app-usage`` and ``x-ad-account-usage``.
"""

from __future__ import annotations

import base64
import json
import secrets
from datetime import date, timedelta
from typing import Any

from aiohttp import web

from sandbox.simcore import Ctx, SimulatedError, Simulator, json_response
from sandbox.truth import FAILING_ACCOUNT, SLOW_ACCOUNT, account_timezone, normalize_account

ALLOWED_FIELDS = {
    "account_id",
    "account_currency",
    "campaign_id",
    "campaign_name",
    "impressions",
    "clicks",
    "spend",
    "actions",
    "conversions",
    "date_start",
    "date_stop",
}
PURCHASE = "offsite_conversion.fb_pixel_purchase"
#: Marketing API versions that answer; any other gets error #2635 (body as in
#: tests/fixtures/official/meta/error_version_2635.json)
LIVE_VERSIONS = ("v25.0", "v26.0", "v27.0")
STATUSES = ("Job Not Started", "Job Started", "Job Running")


def _error(code: int, message: str, status: int = 400, subcode: int | None = None, transient: bool = False,
           headers: dict[str, str] | None = None) -> web.Response:
    err: dict[str, Any] = {"message": message, "type": "OAuthException", "code": code}
    if subcode is not None:
        err["error_subcode"] = subcode
    if transient:
        err["is_transient"] = True
    err["fbtrace_id"] = "A" + secrets.token_hex(10)
    return json_response({"error": err}, status=status, headers=headers)


def _cursor(offset: int) -> str:
    return base64.urlsafe_b64encode(f"offset:{offset}".encode()).decode().rstrip("=")


def _offset(cursor: str) -> int:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        return int(raw.removeprefix("offset:"))
    except ValueError:
        raise SimulatedError(_error(100, "(#100) Invalid cursor: after")) from None


def _version_error(request: web.Request) -> web.Response | None:
    """An expired version: error #2635 (no automatic upgrade is simulated)."""
    if request.match_info["ver"] in LIVE_VERSIONS:
        return None
    err = {"message": "(#2635) You are calling a deprecated version of the Ads API. "
                      f"Please update to the latest version: {LIVE_VERSIONS[-1]}.",
           "code": 2635, "type": "OAuthException", "fbtrace_id": "A" + secrets.token_hex(10)}
    return json_response({"error": err}, status=400)


class MetaSimulator(Simulator):
    media = "meta"

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/{ver}/{node}/insights", self.get_insights),
            web.post("/{ver}/{node}/insights", self.create_job),
            web.get("/{ver}/{node}", self.job_status),
        ]

    # -- platform responses -------------------------------------------------------------------
    def token(self, request: web.Request) -> str | None:
        return super().token(request) or (request.query.get("access_token") or None)

    def auth_error(self, request: web.Request, missing: bool) -> web.Response:
        if missing:
            return _error(104, "An access token is required to request this resource.")
        return _error(
            190,
            "Error validating access token: The session has been invalidated because the user changed their password.",
            subcode=460,
        )

    def denied_error(self, request: web.Request, account: str) -> web.Response:
        return _error(
            200, "(#200) Ad account owner has NOT grant ads_management or ads_read permission", status=403
        )

    def throttle_error(self, request: web.Request, scope: str, account: str, wait_s: float) -> web.Response:
        minutes = self.config.regain_minutes
        if scope == "app":
            headers = {"x-app-usage": json.dumps({"call_count": 100, "total_cputime": 40, "total_time": 45})}
            return _error(4, "(#4) Application request limit reached", subcode=1504022, transient=True, headers=headers)
        buc = {
            account: [
                {
                    "type": "ads_insights",
                    "call_count": 100,
                    "total_cputime": 30,
                    "total_time": 35,
                    "estimated_time_to_regain_access": minutes,
                    "ads_api_access_tier": "standard_access",
                }
            ]
        }
        return _error(
            80000,
            "(#80000) There have been too many calls from this ad-account. Wait a bit and try again. "
            "For more info, please refer to https://developers.facebook.com/docs/graph-api/overview/rate-limiting#ads-insights.",
            subcode=2446079,
            headers={"x-business-use-case-usage": json.dumps(buc)},
        )

    def server_error(self, request: web.Request, down: bool = False) -> web.Response:
        if down:
            return _error(2, "Service temporarily unavailable", status=503, transient=True)
        return _error(2, "An unexpected error has occurred. Please retry your request later.", status=500,
                      transient=True)

    def usage_headers(self, account: str) -> dict[str, str]:
        acc = round(100 * self.utilization(f"acct:{account}", self.config.account_rps))
        app = round(100 * self.utilization("app", self.config.app_rps))
        buc = {
            account: [
                {
                    "type": "ads_insights",
                    "call_count": acc,
                    "total_cputime": acc // 2,
                    "total_time": acc // 2,
                    "estimated_time_to_regain_access": 0,
                    "ads_api_access_tier": "standard_access",
                }
            ]
        }
        return {
            "x-business-use-case-usage": json.dumps(buc),
            "x-app-usage": json.dumps({"call_count": app, "total_cputime": app // 2, "total_time": app // 2}),
            "x-ad-account-usage": json.dumps(
                {"acc_id_util_pct": acc, "reset_time_duration": 0, "ads_api_access_tier": "standard_access"}
            ),
            # on insights calls (Marketing API rate-limiting docs): app-wide and this account's use, in %
            "x-fb-ads-insights-throttle": json.dumps(
                {"app_id_util_pct": app, "acc_id_util_pct": acc, "ads_api_access_tier": "standard_access"}
            ),
        }

    # -- request parsing ----------------------------------------------------------------------
    def _account(self, node: str) -> str:
        if not node.startswith("act_") or not node[4:]:
            raise SimulatedError(_error(100, f"(#100) Unsupported get request. Object with ID '{node}' does not exist",
                                        subcode=33))
        return node[4:]

    @staticmethod
    def _params(request: web.Request, form: dict[str, str] | None = None) -> dict[str, Any]:
        src: dict[str, str] = dict(request.query)
        if form:
            src.update(form)
        if src.get("level", "campaign") != "campaign":
            raise SimulatedError(_error(100, "(#100) this simulator only serves level=campaign"))
        fields = [f for f in src.get("fields", "").split(",") if f]
        bad = [f for f in fields if f not in ALLOWED_FIELDS]
        if bad:
            raise SimulatedError(_error(100, f"(#100) {bad[0]} is not valid for fields param."))
        try:
            tr = json.loads(src["time_range"])
            since, until = date.fromisoformat(tr["since"]), date.fromisoformat(tr["until"])
        except (KeyError, ValueError, TypeError):
            raise SimulatedError(
                _error(100, "(#100) param time_range must be a JSON object with since and until")) from None
        if until < since or (until - since).days > 92:
            raise SimulatedError(_error(100, "(#100) time_range is invalid"))
        if src.get("time_increment", "1") != "1":
            raise SimulatedError(_error(100, "(#100) this simulator only serves time_increment=1"))
        try:
            limit = int(src.get("limit", "25"))
        except ValueError:
            raise SimulatedError(_error(100, "(#100) param limit must be an integer")) from None
        return {"fields": fields, "since": since, "until": until, "limit": max(1, limit)}

    def _rows(self, account: str, params: dict[str, Any], drift: bool) -> list[dict[str, Any]]:
        out = []
        day = params["since"]
        fields = params["fields"] or ["impressions", "spend"]
        while day <= params["until"]:
            for t in self.truth(account, day):
                full: dict[str, Any] = {
                    "account_id": normalize_account("meta", account),
                    "account_currency": t["currency"],
                    "campaign_id": t["campaign_id"],
                    "campaign_name": t["campaign_name"],
                    "impressions": str(t["impressions"]),
                    "clicks": str(t["clicks"]),
                    "spend": format(t["spend"], "f"),
                }
                actions = []
                if t["clicks"]:
                    actions.append({"action_type": "link_click", "value": str(t["clicks"])})
                if t["conversions"]:
                    actions.append({"action_type": PURCHASE, "value": str(t["conversions"])})
                    actions.append({"action_type": "omni_purchase", "value": str(t["conversions"])})
                if actions:
                    full["actions"] = actions
                if t["conversions"]:
                    full["conversions"] = [{"action_type": PURCHASE, "value": str(t["conversions"])}]
                row = {k: full[k] for k in fields if k in full}
                row["date_start"] = row["date_stop"] = day.isoformat()
                if drift and "spend" in row:
                    row["amount_spent"] = row.pop("spend")
                out.append(row)
            day += timedelta(days=1)
        return out

    def _page(self, request: web.Request, rows: list[dict[str, Any]], limit: int, drift: bool) -> web.Response:
        limit = min(limit, self.config.page_size)
        offset = _offset(request.query["after"]) if request.query.get("after") else 0
        page = rows[offset: offset + limit]
        body: dict[str, Any] = {"data": page}
        if page:
            body["paging"] = {"cursors": {"before": _cursor(offset), "after": _cursor(offset + len(page))}}
            if offset + len(page) < len(rows):
                body["paging"]["next"] = str(request.url.update_query({"after": _cursor(offset + len(page))}))
        if offset + len(page) >= len(rows) and not drift:
            self.stats_["served_reports"] += 1
        return json_response(body)

    # -- endpoints ----------------------------------------------------------------------------
    async def get_insights(self, request: web.Request) -> web.StreamResponse:
        if (expired := _version_error(request)) is not None:
            return expired
        node = request.match_info["node"]
        if not node.startswith("act_"):
            return await self.job_results(request)
        account = node[4:]

        async def handle(ctx: Ctx) -> web.Response:
            self._account(node)
            params = self._params(request)
            return self._page(request, self._rows(account, params, ctx.drift), params["limit"], ctx.drift)

        return await self.serve(request, "insights", account, handle, data=True)

    async def create_job(self, request: web.Request) -> web.StreamResponse:
        if (expired := _version_error(request)) is not None:
            return expired
        node = request.match_info["node"]
        account = node.removeprefix("act_")
        form = {k: str(v) for k, v in (await request.post()).items()}

        async def handle(ctx: Ctx) -> web.Response:
            self._account(node)
            params = self._params(request, form)
            job_id = self.next_job_id(6_000_000_000_000)
            polls = self.config.job_polls * (4 if account == SLOW_ACCOUNT else 1)
            self.jobs[job_id] = {
                "account": account,
                "params": params,
                "polls": 0,
                "needed": max(1, polls),
                "failed": ctx.job_failed or account == FAILING_ACCOUNT,
            }
            self.stats_["jobs_created"] += 1
            return json_response({"report_run_id": job_id})

        return await self.serve(request, "create_job", account, handle, job_create=True)

    def _job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise SimulatedError(
                _error(100, f"(#100) Unsupported get request. Object with ID '{job_id}' does not exist", subcode=33)
            )
        return job

    async def job_status(self, request: web.Request) -> web.StreamResponse:
        if (expired := _version_error(request)) is not None:
            return expired
        job_id = request.match_info["node"]
        if job_id.startswith("act_"):  # GET /act_{id}?fields=timezone_name: the ad account node
            return await self.account_node(request, job_id)
        job = self.jobs.get(job_id)
        account = job["account"] if job else "unknown"

        async def handle(ctx: Ctx) -> web.Response:
            job = self._job(job_id)
            job["polls"] += 1
            if job["failed"]:
                status, pct = "Job Failed", 0
            elif job["polls"] >= job["needed"]:
                status, pct = "Job Completed", 100
            else:
                status = STATUSES[min(job["polls"], len(STATUSES) - 1)]
                pct = int(100 * job["polls"] / job["needed"])
            p = job["params"]
            return json_response(
                {
                    "id": job_id,
                    "account_id": job["account"],
                    "async_status": status,
                    "async_percent_completion": pct,
                    "date_start": p["since"].isoformat(),
                    "date_stop": p["until"].isoformat(),
                }
            )

        return await self.serve(request, "job_status", account, handle)

    async def account_node(self, request: web.Request, node: str) -> web.StreamResponse:
        account = node.removeprefix("act_")

        async def handle(ctx: Ctx) -> web.Response:
            fields = [f for f in request.query.get("fields", "").split(",") if f]
            body: dict[str, Any] = {"id": node}
            if "timezone_name" in fields:
                body["timezone_name"] = account_timezone("meta", account)
            return json_response(body)

        return await self.serve(request, "account", account, handle)

    async def job_results(self, request: web.Request) -> web.StreamResponse:
        job_id = request.match_info["node"]
        job = self.jobs.get(job_id)
        account = job["account"] if job else "unknown"

        async def handle(ctx: Ctx) -> web.Response:
            job = self._job(job_id)
            if job["failed"] or job["polls"] < job["needed"]:
                raise SimulatedError(_error(100, "(#100) The report run is not complete", subcode=2490547))
            p = job["params"]
            limit = int(request.query.get("limit", p["limit"]))
            return self._page(request, self._rows(job["account"], p, ctx.drift), limit, ctx.drift)

        return await self.serve(request, "job_results", account, handle, data=True)
