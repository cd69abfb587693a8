"""Server-rendered HTML: Jinja2 templates (``ingest/ui/templates/``), small inline CSS, an
inline SVG chart, no JavaScript.

Why templates: autoescape is on for every template, so whatever a template prints is escaped
unless it is markup on purpose (``markupsafe.Markup``: a macro's or another template's output,
such as :func:`chart`). No value reaches the page raw because someone forgot a helper call.

Redaction: every ``{{ value }}`` passes through the Environment's ``finalize`` hook before it is
escaped: ``redact(str(value))`` (``ingest.errors.redact``; ``None`` prints as ""), so credentials
in ledger text never reach the page. Markup is kept as it is (its parts went through the same hook
when they were rendered). Hence, in the templates: never ``|safe`` or ``Markup()`` ledger text,
and never join it to markup with ``~`` (that escapes without redacting); print it with ``{{ }}``.

This module keeps the logic: formatting helpers and URL/command builders (template globals, and
the filters ``ts``, ``dur``, ``f1``), and the small computations of a view (the chart's geometry).
Links are built with ``urlencode``/``quote``. Whitespace: the templates break lines only between
block elements; where a line break would fall inside text, ``{{- ' ' }}`` keeps a single space.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable
from datetime import UTC, date, datetime, tzinfo
from typing import Any
from urllib.parse import quote, urlencode
from zoneinfo import ZoneInfo

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from ingest.errors import redact
from ingest.outcomes import RunCounts
from ingest.ui.queries import STATE_ORDER, Cell, EventRow, Night, RunRow, StageRow, TaskRow

COLORS = {
    "done": "#2e9d5b", "failed": "#d64545", "retrying": "#e59a1c", "running": "#3d7fd6", "pending": "#9aa3ad",
    "empty": "#d8dde3", "success": "#2e9d5b", "partial": "#e59a1c", "aborted": "#7d4bbd",
    "published": "#2e9d5b", "skipped": "#9aa3ad",
}
MEDIA_COLORS = ["#3d7fd6", "#e5731c", "#7d4bbd", "#2e9d9b", "#c2478f", "#6b8e23"]
OUTCOMES = ("success", "partial", "failed", "aborted", "running")


def _finalize(value: Any) -> Any:
    """Each ``{{ value }}`` of every template, before autoescape: credentials redacted."""
    if value is None:
        return ""
    if isinstance(value, Markup):  # a macro's or a template's own output: already redacted and escaped
        return value
    return redact(str(value))


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


def duration(run: RunRow) -> float | None:
    a, b = run["started_at"], run["finished_at"]
    if not a or not b:
        return None
    a = a if a.tzinfo else a.replace(tzinfo=UTC)
    b = b if b.tzinfo else b.replace(tzinfo=UTC)
    return (b - a).total_seconds()


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


def page_url(base: str, params: dict[str, Any], page_no: int) -> str:
    """A pager link: the page's other parameters, then ``page``."""
    return url(base, **params, page=page_no)


def counts_summary(counts: RunCounts) -> tuple[int, int, int, int]:
    """(planned, ok, failed, retries) of a run."""
    return counts.planned, counts.ok, counts.failed, counts.retries


#: built once: templates are compiled on first use and cached
ENV = Environment(loader=PackageLoader("ingest.ui", "templates"), autoescape=True, undefined=StrictUndefined,
                  finalize=_finalize, trim_blocks=True, lstrip_blocks=True)
ENV.filters.update(ts=fmt_ts, dur=fmt_dur, f1="{:.1f}".format)  # f1: the chart's coordinates
ENV.globals.update(COLORS=COLORS, STATE_ORDER=STATE_ORDER, OUTCOMES=OUTCOMES, STATUS_FILTERS=("", *STATE_ORDER),
                   url=url, page_url=page_url, run_url=run_url, cell_url=cell_url, task_url=task_url,
                   rerun_cmd=rerun_cmd, failed_cmd=failed_cmd, counts_summary=counts_summary, duration=duration)


def _render(name: str, **context: Any) -> str:
    return ENV.get_template(name).render(**context)


# -- pages --------------------------------------------------------------------------------------
def runs_page(rows: list[RunRow], total: int, *, page_no: int, page_size: int, filters: dict[str, Any],
              media_names: Iterable[str], chart_svg: Markup, current: dict[str, tuple[int, int]] | None = None) -> str:
    """``chart_svg`` is :func:`chart`'s output (markup); a plain string would be escaped."""
    return _render("runs.html", rows=rows, total=total, page_no=page_no, page_size=page_size, filters=filters,
                   media_names=list(media_names), chart_svg=chart_svg, current=current or {})


def run_page(run: RunRow, cells: dict[tuple[str, date], Cell], events: dict[str, int],
             media_events: list[EventRow], *, cmd_suffix: str) -> str:
    media = [m for m in run["media"].split(",") if m]
    days = sorted({d for _, d in cells} | {run["date_from"], run["date_to"]})
    return _render("run.html", run=run, media=media, days=days, cells=cells, events=events, media_events=media_events,
                   cmd_suffix=cmd_suffix)


def cell_page(run: RunRow, media: str, day: date, rows: list[TaskRow], total: int,
              stage: StageRow | None, *, page_no: int, page_size: int, status: str | None,
              cmd_suffix: str) -> str:
    return _render("cell.html", run=run, media=media, day=day, rows=rows, total=total, stage=stage, page_no=page_no,
                   page_size=page_size, status=status, cmd_suffix=cmd_suffix)


def task_page(run: RunRow, task: TaskRow, history: list[EventRow], stage: StageRow | None,
              *, cmd_suffix: str) -> str:
    return _render("task.html", run=run, t=task, history=history, stage=stage, cmd_suffix=cmd_suffix)


def message_page(title: str, message: str, status_hint: str = "") -> str:
    return _render("message.html", title=title, message=message, status_hint=status_hint)


# -- the chart ----------------------------------------------------------------------------------
def chart(nights: list[Night], media: list[str]) -> Markup:
    """Inline SVG: per night and media, fetch duration (bars, top) and failed reports (bars, bottom).

    The geometry is computed here; ``chart.svg.html`` draws it (escaped and redacted like every page)."""
    return Markup(_render("chart.svg.html", c=_chart_view(nights, media) if nights else None))


def _chart_view(nights: list[Night], media: list[str]) -> dict[str, Any]:
    media = media or sorted({m for n in nights for m in n["media"]})
    color = {m: MEDIA_COLORS[i % len(MEDIA_COLORS)] for i, m in enumerate(media)}
    n_nights, n_media = len(nights), max(1, len(media))
    left, top, group_w, plot_h, fail_h, gap = 48, 14, max(18, min(40, 900 // max(n_nights, 1))), 120, 50, 20
    width = left + n_nights * group_w + 10
    height = top + plot_h + gap + fail_h + 34
    max_d = max([v["duration_s"] for n in nights for v in n["media"].values()] + [1.0])
    max_f = max([v["failed"] for n in nights for v in n["media"].values()] + [1])
    bar_w = max(3.0, (group_w - 4) / n_media)
    columns = []
    for i, n in enumerate(nights):
        x0 = left + i * group_w + 2
        bars = []
        for j, m in enumerate(media):
            v = n["media"].get(m)
            if not v:
                continue
            bars.append({"media": m, "color": color[m], "x": x0 + j * bar_w, "dh": plot_h * v["duration_s"] / max_d,
                         "fh": max(2.0, fail_h * v["failed"] / max_f) if v["failed"] else 0.0,
                         "duration_s": v["duration_s"], "failed": v["failed"], "settled": v["settled"]})
        was_bad = any(o in ("failed", "partial", "aborted") for o in n["outcomes"])
        failed_now = n["now_failed"]
        # the dot: no run that night; still failed reports now; or failed, since made whole by a rerun
        dot = "missing" if n["missing"] else "failed" if failed_now else "fixed" if was_bad else None
        columns.append({"day": n["date"], "x0": x0, "cx": x0 + group_w / 2 - 2, "missing": n["missing"],
                        "bars": bars, "label": i % max(1, n_nights // 10) == 0 or i == n_nights - 1, "dot": dot,
                        "failed_now": failed_now, "outcomes": n["outcomes"]})
    return {"media": media, "color": color, "nights": columns, "left": left, "top": top, "group_w": group_w,
            "plot_h": plot_h, "fail_h": fail_h, "width": width, "height": height, "bar_w": bar_w, "max_d": max_d,
            "max_f": max_f, "base_d": top + plot_h, "base_f": top + plot_h + gap + fail_h}
