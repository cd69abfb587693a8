"""The pre-aggregation SQL files and how they are rendered.

The files in ``aggregations/sql`` are GoogleSQL, parameterized by dates only (``@first`` and
``@last`` for the daily ones: one query covers every date a night changed; ``@date`` for the
month-to-date as of one date). They are
single statements on purpose: query parameters work there on bqemulator too (it rejects them
inside multi-statement scripts). Two things cannot be parameters in SQL — table names — and
are substituted here: ``${raw}`` (a UNION ALL over the per-media raw tables, each branch with
its own partition filter so BigQuery prunes partitions) and ``${advertiser_accounts}``.
Every substituted identifier passes ``ingest.config.check_name``; nothing else is ever pasted
into SQL.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from string import Template

from ingest.config import PROJECT_RE, check_name
from ingest.errors import ConfigError

#: columns of every raw table, in CSV order (see ingest.media.base.CSV_COLUMNS)
RAW_COLUMNS = (
    "date", "media", "account_id", "campaign_id", "campaign_name",
    "impressions", "clicks", "spend", "conversions", "currency",
)

DAYS = "date BETWEEN @first AND @last"
MONTH_TO_DATE = "date BETWEEN DATE_TRUNC(@date, MONTH) AND @date"


@dataclass(frozen=True, slots=True)
class QuerySpec:
    name: str
    raw_filter: str  # a constant of this module, never user input


#: name → file (``sql/{name}.sql``) and the date filter applied to each raw table branch
QUERIES: dict[str, QuerySpec] = {
    "daily_campaign": QuerySpec("daily_campaign", DAYS),
    "daily_advertiser": QuerySpec("daily_advertiser", DAYS),
    "mtd_advertiser_media": QuerySpec("mtd_advertiser_media", MONTH_TO_DATE),
    "raw_totals": QuerySpec("raw_totals", DAYS),
}

ACCOUNTS_TABLE = "advertiser_accounts"


def raw_table(media: str) -> str:
    return f"raw_{check_name(media, 'media')}"


def table_ref(project: str, dataset: str, table: str) -> str:
    """Backquoted ``project.dataset.table`` after strict checks of every part."""
    if not PROJECT_RE.fullmatch(project):
        raise ConfigError(f"project id {project!r} is not allowed")
    check_name(dataset, "dataset")
    if not table.startswith("_"):
        check_name(table, "table")
    else:
        check_name(table[1:], "table")
    return f"`{project}.{dataset}.{table}`"


def sql_text(name: str) -> str:
    """The file without its whole-line ``--`` comments: bqemulator counts an ``@date`` inside a
    comment as a parameter use and then rejects the query (parameter count mismatch)."""
    text = resources.files("aggregations").joinpath("sql", f"{name}.sql").read_text(encoding="utf-8")
    return "".join(line for line in text.splitlines(keepends=True) if not line.lstrip().startswith("--"))


def raw_union(project: str, dataset: str, media: list[str], raw_filter: str) -> str:
    if not media:
        raise ConfigError("no media configured: nothing to aggregate")
    cols = ", ".join(RAW_COLUMNS)
    branches = [
        f"  SELECT {cols}\n  FROM {table_ref(project, dataset, raw_table(m))}\n  WHERE {raw_filter}"
        for m in media
    ]
    return "\n  UNION ALL\n".join(branches)


def render(name: str, project: str, dataset: str, media: list[str]) -> str:
    """The SQL of ``sql/{name}.sql`` with table names filled in from the (validated) config."""
    try:
        spec = QUERIES[name]
    except KeyError:
        raise ConfigError(f"unknown query {name!r} (known: {', '.join(QUERIES)})") from None
    return Template(sql_text(spec.name)).substitute(
        raw=raw_union(project, dataset, media, spec.raw_filter),
        advertiser_accounts=table_ref(project, dataset, ACCOUNTS_TABLE),
    )
