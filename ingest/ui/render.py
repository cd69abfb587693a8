"""Server-rendered HTML: small inline CSS, an inline SVG chart, no JavaScript.

Everything that came from the ledger passes through :func:`h`: credentials redacted
(``ingest.errors.redact``), then HTML-escaped. Links are built with ``urlencode``.
"""

from __future__ import annotations

import html
import shlex
from collections.abc import Iterable
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from ingest.errors import redact
from ingest.outcomes import RunCounts
from ingest.ui.queries import STATE_ORDER, Cell

COLORS = {
    "done": "#2e9d5b", "failed": "#d64545", "retrying": "#e59a1c", "running": "#3d7fd6", "pending": "#9aa3ad",
    "empty": "#d8dde3", "success": "#2e9d5b", "partial": "#e59a1c", "aborted": "#7d4bbd",
    "published": "#2e9d5b", "skipped": "#9aa3ad",
}
MEDIA_COLORS = ["#3d7fd6", "#e5731c", "#7d4bbd", "#2e9d9b", "#c2478f", "#6b8e23"]

CSS = """
*{box-sizing:border-box}body{font:14px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2329;background:#f5f7f9}
header{background:#1d2934;color:#fff;padding:10px 20px;display:flex;gap:18px;align-items:baseline}
header a{color:#fff;text-decoration:none;font-weight:600}header .sub{color:#a9b6c2;font-size:12px}
main{padding:16px 20px;max-width:1500px}h1{font-size:20px;margin:4px 0 12px}h2{font-size:16px;margin:18px 0 8px}
table{border-collapse:collapse;background:#fff;width:100%;box-shadow:0 1px 2px #0001}
th,td{padding:6px 8px;border-bottom:1px solid #e6e9ed;text-align:left;vertical-align:top}th{background:#eef1f4;font-weight:600;font-size:12px;text-transform:uppercase;color:#505a64}
td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;padding:1px 8px;border-radius:10px;color:#fff;font-size:12px;font-weight:600}
.muted{color:#6b7580}.small{font-size:12px}.err{color:#a12b2b}.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,monospace;font-size:12px}
code.cmd{display:inline-block;background:#1d2934;color:#e8eef3;padding:3px 8px;border-radius:4px;user-select:all;white-space:pre-wrap;word-break:break-all}
form.filters{display:flex;gap:10px;align-items:end;margin:0 0 12px;flex-wrap:wrap}form.filters label{display:flex;flex-direction:column;font-size:12px;color:#505a64}
form.filters input,form.filters select,form.filters button{font:inherit;padding:4px 6px}
.grid td.cell{padding:0;min-width:150px}.grid .box{border-left:6px solid;padding:6px 8px;height:100%}
.grid .box a{font-weight:600;color:inherit}.bar{display:flex;height:8px;border-radius:4px;overflow:hidden;margin:4px 0;background:#e6e9ed}
details summary{cursor:pointer;color:#2a5fa8;font-size:12px}details ul{margin:4px 0;padding-left:18px}
.pager{margin:10px 0;display:flex;gap:12px;align-items:center}.kv{display:grid;grid-template-columns:max-content 1fr;gap:4px 16px;background:#fff;padding:10px 14px;box-shadow:0 1px 2px #0001}
.kv dt{color:#505a64}.kv dd{margin:0}.chart{background:#fff;box-shadow:0 1px 2px #0001;padding:8px;overflow-x:auto}
.legend span{display:inline-block;margin-right:14px;font-size:12px}.legend i{display:inline-block;width:10px;height:10px;margin-right:4px;border-radius:2px}
tr.failed td:first-child{border-left:4px solid #d64545}
"""


def h(value: Any) -> str:
    """Redact, then escape: the only way ledger text reaches the page."""
    if value is None:
        return ""
    return html.escape(redact(str(value)), quote=True)


#: the zone times are shown in: the config's ``timezone`` (set by ``create_app``), where the
#: operators and analysts are; the ledger stores UTC
_DISPLAY_TZ: list[tzinfo] = [UTC]


def set_display_timezone(name: str) -> None:
    _DISPLAY_TZ[0] = ZoneInfo(name)


def fmt_ts(ts: datetime | None) -> str:
    if ts is None:
        return ""
    ts = ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    local = ts.astimezone(_DISPLAY_TZ[0])
    return local.strftime("%Y-%m-%d %H:%M:%S ") + (local.tzname() or "")


def fmt_dur(seconds: float | None) -> str:
    if seconds is None:
        return ""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.1f}s"
    m, s = divmod(int(round(seconds)), 60)
    hh, m = divmod(m, 60)
    return f"{hh}h{m:02d}m" if hh else f"{m}m{s:02d}s"


def duration(run: dict[str, Any]) -> float | None:
    a, b = run.get("started_at"), run.get("finished_at")
    if not a or not b:
        return None
    a = a if a.tzinfo else a.replace(tzinfo=UTC)
    b = b if b.tzinfo else b.replace(tzinfo=UTC)
    return (b - a).total_seconds()


def badge(state: str, text: str | None = None) -> str:
    return f'<span class="badge state-{h(state)}" style="background:{COLORS.get(state, "#6b7580")}">{h(text or state)}</span>'


def url(path: str, **params: Any) -> str:
    q = {k: v for k, v in params.items() if v not in (None, "", False)}
    return path + ("?" + urlencode(q) if q else "")


def run_url(run_id: str) -> str:
    return f"/runs/{quote(run_id, safe='')}"


def cell_url(run_id: str, media: str, day: date, **params: Any) -> str:
    return url(f"{run_url(run_id)}/cells/{quote(media, safe='')}/{day.isoformat()}", **params)


def task_url(run_id: str, media: str, day: date, account: str) -> str:
    return f"{run_url(run_id)}/cells/{quote(media, safe='')}/{day.isoformat()}/{quote(account, safe='')}"


def rerun_cmd(prefix: str, media: str, day: date, account: str | None = None) -> str:
    cmd = f"python -m ingest rerun --media {shlex.quote(media)} --date {day.isoformat()}"
    if account:
        cmd += f" --account {shlex.quote(account)}"
    return cmd + prefix


def failed_cmd(prefix: str, media: str, day: date) -> str:
    """What an operator wants for a cell with failures: only what failed (or never finished)."""
    return f"python -m ingest rerun --failed --media {shlex.quote(media)} --date {day.isoformat()}" + prefix


def page(title: str, body: str, *, subtitle: str = "") -> str:
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width'>"
            f"<title>{h(title)} · ingest</title><style>{CSS}</style></head><body>"
            f"<header><a href='/'>ingest · run history</a><span class=sub>{h(subtitle)}</span>"
            f"<span class=sub style='margin-left:auto'>read-only</span></header><main>{body}</main></body></html>")


def state_bar(states: dict[str, int]) -> str:
    total = sum(states.values()) or 1
    parts = "".join(f'<span title="{h(s)}: {n}" style="width:{100 * n / total:.2f}%;background:{COLORS[s]}"></span>'
                    for s in STATE_ORDER if (n := states.get(s, 0)))
    return f'<div class="bar">{parts}</div>'


def counts_summary(counts: RunCounts) -> tuple[int, int, int, int]:
    """(planned, ok, failed, retries) of a run."""
    return counts.planned, counts.ok, counts.failed, counts.retries


def pager(base: str, page_no: int, page_size: int, total: int, **params: Any) -> str:
    pages = max(1, -(-total // page_size))
    prev = f"<a href='{h(url(base, **params, page=page_no - 1))}' rel=prev>← newer</a>" if page_no > 1 else ""
    nxt = f"<a href='{h(url(base, **params, page=page_no + 1))}' rel=next>older →</a>" if page_no < pages else ""
    return f"<div class=pager>{prev}<span class=muted>page {page_no} of {pages} · {total} in all</span>{nxt}</div>"


# -- pages --------------------------------------------------------------------------------------
def now_badge(current: tuple[int, int] | None) -> str:
    """What the run's dates look like *now* (after any rerun), beside the run's own outcome."""
    if not current or not current[0]:
        return ""
    reports, failed = current
    return badge("failed", f"{failed} failed") if failed else badge("success", "all done")


def runs_page(rows: list[dict[str, Any]], total: int, *, page_no: int, page_size: int, filters: dict[str, Any],
              media_names: Iterable[str], chart_svg: str, current: dict[str, tuple[int, int]] | None = None) -> str:
    current = current or {}
    media_opts = "".join(f"<option value='{h(m)}'{' selected' if filters.get('media') == m else ''}>{h(m)}</option>"
                         for m in media_names)
    outcome_opts = "".join(f"<option{' selected' if filters.get('outcome') == o else ''}>{o}</option>"
                           for o in ("success", "partial", "failed", "aborted", "running"))
    form = (f"<form class=filters method=get action='/'>"
            f"<label>report date<input type=date name=date value='{h(filters.get('date') or '')}'></label>"
            f"<label>media<select name=media><option value=''>all</option>{media_opts}</select></label>"
            f"<label>outcome<select name=outcome><option value=''>all</option>{outcome_opts}</select></label>"
            f"<button type=submit>filter</button> <a href='/' class=small>clear</a></form>")
    trs = []
    for r in rows:
        planned, ok, failed, retries = counts_summary(r["counts_doc"])
        dates = str(r["date_from"]) if r["date_from"] == r["date_to"] else f"{r['date_from']} → {r['date_to']}"
        trs.append(
            f"<tr class='run {h(r['outcome'])}'><td><a class=run-link href='{h(run_url(r['run_id']))}'>{h(r['run_id'])}</a></td>"
            f"<td>{h(r['kind'])}</td><td>{h(dates)}</td><td>{h(r['media'].replace(',', ', '))}</td>"
            f"<td>{badge(r['outcome'])}</td><td class=now>{now_badge(current.get(r['run_id']))}</td>"
            f"<td class=num>{ok}/{planned}</td><td class=num>{failed or ''}</td>"
            f"<td class=num>{retries or ''}</td><td class=num>{fmt_dur(duration(r))}</td>"
            f"<td class='small muted'>{fmt_ts(r['started_at'])}<br>{h(r['started_by'])}</td></tr>")
    table = ("<table class=runs><thead><tr><th>run</th><th>kind</th><th>dates</th><th>media</th><th>outcome</th>"
             "<th title='the state of these dates now, after any rerun'>now</th>"
             "<th class=num>ok/planned</th><th class=num>failed</th><th class=num>retries</th><th class=num>duration</th>"
             "<th>started</th></tr></thead><tbody>" + ("".join(trs) or
                                                       "<tr><td colspan=11 class=muted>no runs match</td></tr>") + "</tbody></table>")
    body = (f"<h1>Runs</h1><h2>Last 30 nights</h2><div class=chart>{chart_svg}</div><h2>History</h2>{form}{table}"
            + pager("/", page_no, page_size, total, **filters))
    return page("runs", body, subtitle=f"{total} runs")


def run_page(run: dict[str, Any], cells: dict[tuple[str, date], Cell], events: dict[str, int],
             media_events: list[dict[str, Any]], *, cmd_suffix: str) -> str:
    media = [m for m in run["media"].split(",") if m]
    days = sorted({d for _, d in cells} | {run["date_from"], run["date_to"]})
    planned, ok, failed, retries = counts_summary(run["counts_doc"])
    ev = ", ".join(f"{h(k)} {n}" for k, n in sorted(events.items())) or "none"
    head = (f"<h1>Run <span class=mono>{h(run['run_id'])}</span> {badge(run['outcome'])}</h1><dl class=kv>"
            f"<dt>kind</dt><dd>{h(run['kind'])}</dd><dt>dates</dt><dd>{h(run['date_from'])} → {h(run['date_to'])}</dd>"
            f"<dt>media</dt><dd>{h(', '.join(media))}</dd><dt>started</dt><dd>{fmt_ts(run['started_at'])} by {h(run['started_by'])}</dd>"
            f"<dt>finished</dt><dd>{fmt_ts(run['finished_at']) or '<span class=muted>not finished</span>'}"
            f" ({fmt_dur(duration(run))})</dd>"
            f"<dt>reports</dt><dd>{ok}/{planned} ok, {failed} failed, {retries} retries</dd>"
            f"<dt>events</dt><dd>{ev}</dd></dl>")
    if media_events:
        items = "".join(f"<li>{fmt_ts(e['at'])} <b>{h(e['media'])}</b> {h(e['kind'])}: {h(e['message'])}</li>"
                        for e in media_events)
        head += f"<details><summary>supervisor and breaker events ({len(media_events)})</summary><ul class=small>{items}</ul></details>"
    legend = "<p class='legend'>" + "".join(f"<span><i style='background:{COLORS[s]}'></i>{s}</span>" for s in STATE_ORDER) + "</p>"
    ths = "".join(f"<th>{h(d)}</th>" for d in days)
    trs = []
    for m in media:
        tds = []
        for d in days:
            c = cells.get((m, d))
            tds.append(f"<td class=cell>{_grid_cell(run['run_id'], c, cmd_suffix) if c else '<span class=muted>–</span>'}</td>")
        trs.append(f"<tr><th>{h(m)}</th>{''.join(tds)}</tr>")
    grid = f"<h2>Media × date</h2>{legend}<table class=grid><thead><tr><th>media</th>{ths}</tr></thead><tbody>{''.join(trs)}</tbody></table>"
    note = ("<p class='small muted'>Cells show the <i>current</i> state of each report (a later run may have re-fetched "
            "some: “touched” counts those this run last wrote); retries, failures and breaker counts are this run's own events.</p>")
    return page(run["run_id"], head + grid + note, subtitle=f"run {run['run_id']}")


def _grid_cell(run_id: str, c: Cell, cmd_suffix: str) -> str:
    st = c.state
    done = c.states.get("done", 0)
    lines = [f"<a class=cell-link href='{h(cell_url(run_id, c.media, c.day))}'>{done}/{c.reports} done</a>"
             + (f" · <span class=err>{c.states.get('failed', 0)} failed</span>" if c.states.get("failed") else ""),
             state_bar(c.states)]
    extra = []
    if c.touched != c.reports:
        extra.append(f"{c.touched} touched")
    extra.append(f"attempts {c.attempts} (max {c.max_attempts})")
    if c.events.get("retry"):
        extra.append(f"{c.events['retry']} retries")
    if c.events.get("breaker_open"):
        extra.append(f"<span class=err>breaker opened {c.events['breaker_open']}×</span>")
    if c.fetch_s:
        extra.append(f"fetch {fmt_dur(c.fetch_s)}")
    lines.append(f"<div class='small muted'>{' · '.join(extra)}</div>")
    if c.errors:
        e = c.errors[0]
        lines.append(f"<div class='small err'>{h(e['error_kind'])} ×{e['count']}: {h((e['message'] or '')[:140])}</div>")
    if c.stage:
        s = c.stage
        lines.append(f"<div class=small>stage 2 {badge(s['status'])} {h(s['loaded_rows'] or '')}"
                     f"{' rows' if s['loaded_rows'] else ''}</div>")
    if c.open_accounts:
        items = "".join(
            f"<li><a href='{h(task_url(run_id, c.media, c.day, a['account_id']))}'>{h(a['account_id'])}</a> "
            f"{badge(a['status'])} {h(a['error_kind'] or '')} <span class=muted>({a['attempts']} att.)</span></li>"
            for a in c.open_accounts)
        more = c.reports - done - len(c.open_accounts)
        items += f"<li><a href='{h(cell_url(run_id, c.media, c.day))}'>{more} more…</a></li>" if more > 0 else ""
        lines.append(f"<details><summary>accounts not done ({c.reports - done})</summary><ul class=small>{items}</ul></details>")
    cmd = failed_cmd(cmd_suffix, c.media, c.day) if c.open_accounts else rerun_cmd(cmd_suffix, c.media, c.day)
    lines.append(f"<div class=small><code class=cmd>{h(cmd)}</code></div>")
    return f"<div class='box state-{st}' data-state='{st}' style='border-color:{COLORS.get(st, '#999')}'>{''.join(lines)}</div>"


def _events_list(events: list[dict[str, Any]], *, with_run: bool = False) -> str:
    if not events:
        return "<span class=muted>no events</span>"
    items = []
    for e in events:
        parts = [fmt_ts(e["at"])]
        if with_run:
            parts.append(f"<a class=mono href='{h(run_url(e['run_id']))}'>{h(e['run_id'])}</a>")
        parts.append(f"<b>{h(e['kind'])}</b>")
        if e.get("attempt"):
            parts.append(f"attempt {e['attempt']}")
        if e.get("error_kind"):
            parts.append(f"· {h(e['error_kind'])}")
        text = " ".join(parts)
        if e.get("message"):
            text += f": <span class=err>{h(e['message'])}</span>"
        items.append(f"<li>{text}</li>")
    return f"<ol class=small>{''.join(items)}</ol>"


def _stage_block(stage: dict[str, Any] | None) -> str:
    if not stage:
        return "<p class=muted>stage 2: nothing recorded for this partition</p>"
    return (f"<dl class=kv><dt>stage 2</dt><dd>{badge(stage['status'])} (run <a class=mono href='{h(run_url(stage['run_id']))}'>"
            f"{h(stage['run_id'])}</a>, {fmt_ts(stage['updated_at'])})</dd><dt>rows loaded</dt><dd>{h(stage['loaded_rows'])}</dd>"
            f"<dt>reconciliation</dt><dd class='{'err' if stage['status'] == 'failed' else ''}'>{h(stage['message'])}</dd></dl>")


def _task_rows(run_id: str, rows: list[dict[str, Any]], cmd_suffix: str) -> str:
    trs = []
    for r in rows:
        paths = "<br>".join(f"<span class=mono>{h(p)}</span>" for p in r["paths"]) or "<span class=muted>none</span>"
        detail = (f"<details{' open' if r['status'] == 'failed' and len(rows) <= 5 else ''}><summary>details</summary>"
                  f"<div class=small>GCS: {paths}</div><div class=small>events this run:</div>{_events_list(r['events'])}"
                  f"<code class=cmd>{h(rerun_cmd(cmd_suffix, r['media'], r['date'], r['account_id']))}</code></details>")
        trs.append(
            f"<tr class='task {h(r['status'])}' id='acct-{h(r['account_id'])}'><td><a href='{h(task_url(run_id, r['media'], r['date'], r['account_id']))}'>"
            f"{h(r['account_id'])}</a></td><td>{badge(r['status'])}</td><td class=num>{r['attempts']}</td>"
            f"<td>{h(r['error_kind'])}</td><td class='err small'>{h((r['error_message'] or '')[:400])}</td>"
            f"<td class=num>{h(r['rows'])}</td><td class=num>{fmt_dur(r['duration_s'])}</td>"
            f"<td class='small muted'>{fmt_ts(r['started_at'])}<br>{fmt_ts(r['finished_at'])}</td>"
            f"<td class='small mono'>{h(r['run_id'])}</td><td>{detail}</td></tr>")
    return ("<table class=tasks><thead><tr><th>account</th><th>state</th><th class=num>attempts</th><th>error</th><th>message</th>"
            "<th class=num>rows</th><th class=num>fetch</th><th>started / finished</th><th>last run</th><th></th></tr></thead><tbody>"
            + ("".join(trs) or "<tr><td colspan=10 class=muted>no reports</td></tr>") + "</tbody></table>")


def cell_page(run: dict[str, Any], media: str, day: date, rows: list[dict[str, Any]], total: int,
              stage: dict[str, Any] | None, *, page_no: int, page_size: int, status: str | None, cmd_suffix: str) -> str:
    filt = " ".join(
        f"<a href='{h(cell_url(run['run_id'], media, day, status=s))}'>{'<b>' if s == status else ''}{s or 'all'}{'</b>' if s == status else ''}</a>"
        for s in ("", *STATE_ORDER))
    body = (f"<p class=small><a href='{h(run_url(run['run_id']))}'>← run {h(run['run_id'])}</a></p>"
            f"<h1>{h(media)} · {h(day)}</h1>{_stage_block(stage)}"
            f"<p>Re-run what failed here: <code class=cmd>{h(failed_cmd(cmd_suffix, media, day))}</code> · "
            f"everything in this cell: <code class=cmd>{h(rerun_cmd(cmd_suffix, media, day))}</code></p>"
            f"<h2>Accounts</h2><p class=small>show: {filt}</p>{_task_rows(run['run_id'], rows, cmd_suffix)}"
            + pager(cell_url(run["run_id"], media, day), page_no, page_size, total, status=status))
    return page(f"{media} {day}", body, subtitle=f"run {run['run_id']}")


def task_page(run: dict[str, Any], task: dict[str, Any], history: list[dict[str, Any]], stage: dict[str, Any] | None,
              *, cmd_suffix: str) -> str:
    t = task
    paths = "".join(f"<li class=mono>{h(p)}</li>" for p in t["paths"]) or "<li class=muted>none</li>"
    err = ""
    if t["error_kind"] or t["error_message"]:
        err = f"<dt>last error</dt><dd class=err><b class=error-kind>{h(t['error_kind'])}</b>: <span class=error-message>{h(t['error_message'])}</span></dd>"
    body = (f"<p class=small><a href='{h(run_url(run['run_id']))}'>← run {h(run['run_id'])}</a> · "
            f"<a href='{h(cell_url(run['run_id'], t['media'], t['date']))}'>{h(t['media'])} · {h(t['date'])}</a></p>"
            f"<h1>{h(t['media'])} / {h(t['account_id'])} / {h(t['date'])} {badge(t['status'])}</h1>"
            f"<dl class=kv><dt>state</dt><dd>{h(t['status'])} (last written by run <a class=mono href='{h(run_url(t['run_id']))}'>"
            f"{h(t['run_id'])}</a>)</dd><dt>attempts</dt><dd>{t['attempts']}</dd>{err}"
            f"<dt>started</dt><dd>{fmt_ts(t['started_at'])}</dd><dt>finished</dt><dd>{fmt_ts(t['finished_at'])}</dd>"
            f"<dt>fetch time</dt><dd>{fmt_dur(t['duration_s'])}</dd><dt>requests</dt><dd>{h(t['requests'])}</dd>"
            f"<dt>rows / bytes</dt><dd>{h(t['rows'])} / {h(t['bytes'])}</dd>"
            f"<dt>totals</dt><dd>impressions {h(t['impressions'])}, clicks {h(t['clicks'])}, spend {h(t['spend'])}, "
            f"conversions {h(t['conversions'])}</dd><dt>GCS</dt><dd><ul>{paths}</ul></dd></dl>"
            + f"<p>Re-run this report: <code class=cmd>{h(rerun_cmd(cmd_suffix, t['media'], t['date'], t['account_id']))}</code></p>"
            + (f"<p>Or everything that failed for {h(t['media'])} on {h(t['date'])}: "
               f"<code class=cmd>{h(failed_cmd(cmd_suffix, t['media'], t['date']))}</code></p>" if t["status"] == "failed" else "")
            + f"<h2>Stage 2 and reconciliation</h2>{_stage_block(stage)}"
            f"<h2>History (all runs, newest first)</h2>{_events_list(history, with_run=True)}")
    return page(f"{t['media']}/{t['account_id']}/{t['date']}", body, subtitle=f"run {run['run_id']}")


def message_page(title: str, message: str, status_hint: str = "") -> str:
    return page(title, f"<h1>{h(title)}</h1><p>{h(message)}</p><p class=muted>{h(status_hint)}</p>")


# -- the chart ----------------------------------------------------------------------------------
def chart(nights: list[dict[str, Any]], media: list[str]) -> str:
    """Inline SVG: per night and media, fetch duration (bars, top) and failed reports (bars, bottom)."""
    if not nights:
        return "<p class=muted>no nightly runs recorded yet</p>"
    media = media or sorted({m for n in nights for m in n["media"]})
    color = {m: MEDIA_COLORS[i % len(MEDIA_COLORS)] for i, m in enumerate(media)}
    n_nights, n_media = len(nights), max(1, len(media))
    left, top, group_w, plot_h, fail_h, gap = 48, 14, max(18, min(40, 900 // max(n_nights, 1))), 120, 50, 20
    width = left + n_nights * group_w + 10
    height = top + plot_h + gap + fail_h + 34
    max_d = max([v["duration_s"] for n in nights for v in n["media"].values()] + [1.0])
    max_f = max([v["failed"] for n in nights for v in n["media"].values()] + [1])
    bar_w = max(3.0, (group_w - 4) / n_media)
    out = [f"<svg xmlns='http://www.w3.org/2000/svg' role=img aria-label='duration and failures per media, last {n_nights} nights' "
           f"width='{width}' height='{height}' viewBox='0 0 {width} {height}' font-family='system-ui,sans-serif' font-size='10'>"]
    # axes and labels
    base_d, base_f = top + plot_h, top + plot_h + gap + fail_h
    out.append(f"<text x='4' y='{top + 8}' fill='#505a64'>{fmt_dur(max_d)}</text>")
    out.append(f"<text x='4' y='{base_d}' fill='#505a64'>0</text>")
    out.append(f"<text x='4' y='{top + plot_h + gap + 8}' fill='#d64545'>{max_f} failed</text>")
    out.append(f"<line x1='{left}' y1='{base_d}' x2='{width - 6}' y2='{base_d}' stroke='#c5ccd3'/>")
    out.append(f"<line x1='{left}' y1='{base_f}' x2='{width - 6}' y2='{base_f}' stroke='#c5ccd3'/>")
    for i, n in enumerate(nights):
        x0 = left + i * group_w + 2
        day = n["date"]
        if n.get("missing"):  # a night no run covered: a visible gap, never a hidden one
            out.append(f"<rect class='missing' x='{x0:.1f}' y='{top}' width='{group_w - 4:.1f}' height='{plot_h}' "
                       f"fill='none' stroke='#9aa5b1' stroke-dasharray='3 3'><title>{h(day)}: no run</title></rect>")
        for j, m in enumerate(media):
            v = n["media"].get(m)
            if not v:
                continue
            x = x0 + j * bar_w
            dh = plot_h * v["duration_s"] / max_d
            out.append(f"<rect class='dur' x='{x:.1f}' y='{base_d - dh:.1f}' width='{bar_w - 1:.1f}' height='{dh:.1f}' "
                       f"fill='{color[m]}'><title>{h(day)} {h(m)}: {fmt_dur(v['duration_s'])}, {v['settled']} reports</title></rect>")
            if v["failed"]:
                fh = max(2.0, fail_h * v["failed"] / max_f)
                out.append(f"<rect class='fail' x='{x:.1f}' y='{base_f - fh:.1f}' width='{bar_w - 1:.1f}' height='{fh:.1f}' "
                           f"fill='{color[m]}' stroke='#d64545'><title>{h(day)} {h(m)}: {v['failed']} failed</title></rect>")
        was_bad = any(o in ("failed", "partial", "aborted") for o in n["outcomes"])
        failed_now = n.get("now_failed", 1 if was_bad else 0)
        if i % max(1, n_nights // 10) == 0 or i == n_nights - 1:
            out.append(f"<text x='{x0}' y='{height - 20}' fill='#505a64'>{day.strftime('%m-%d')}</text>")
        cx = f"{x0 + group_w / 2 - 2:.1f}"
        if n.get("missing"):
            out.append(f"<circle class='night-missing' cx='{cx}' cy='{height - 8}' r='3' fill='#9aa5b1'>"
                       f"<title>{h(day)}: no run</title></circle>")
        elif failed_now:  # its current state: still failed reports
            out.append(f"<circle class='night-failed' cx='{cx}' cy='{height - 8}' r='3' fill='#d64545'><title>{h(day)}: "
                       f"{failed_now} reports failed now (runs: {h(', '.join(n['outcomes']))})</title></circle>")
        elif was_bad:  # it failed, and a rerun since made it whole: green, its history kept in the title
            out.append(f"<circle class='night-fixed' cx='{cx}' cy='{height - 8}' r='3' fill='#2f9e44'><title>{h(day)}: "
                       f"all done now (runs: {h(', '.join(n['outcomes']))})</title></circle>")
    out.append("</svg>")
    legend = "<p class=legend>" + "".join(f"<span><i style='background:{color[m]}'></i>{h(m)}</span>" for m in media) + (
        "<span class=muted>top: fetch duration · bottom: failed reports · red dot: reports of that date failed now · "
        "green dot: failed, since made whole by a rerun · dashed: no run that night</span></p>")
    return "".join(out) + legend
