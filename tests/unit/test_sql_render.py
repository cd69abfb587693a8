"""The SQL files render from config with checked identifiers only; Totals are exact."""

from __future__ import annotations

from datetime import date
from decimal import Decimal as D

import pytest

from aggregations.queries import QUERIES, render, table_ref
from aggregations.reconcile import reconcile
from aggregations.totals import Totals
from ingest.errors import ConfigError, DataError
from ingest.media.base import Row, rows_to_csv

MEDIA = ["meta", "google_ads", "yahoo_ads"]


@pytest.mark.parametrize("name", sorted(QUERIES))
def test_every_query_renders_a_union_over_all_media(name: str) -> None:
    sql = render(name, "local-demo", "ads", MEDIA)
    for m in MEDIA:
        assert sql.count(f"`local-demo.ads.raw_{m}`") == 1
    assert sql.count("UNION ALL") == len(MEDIA) - 1
    assert "$" not in sql and "--" not in sql  # placeholders filled; comments stripped for bqemulator
    if name == "mtd_advertiser_media":
        assert "@date" in sql and "@" not in sql.replace("@date", "")
    else:  # the daily queries cover every date a night changed in one job
        assert "@first" in sql and "@last" in sql and "@" not in sql.replace("@first", "").replace("@last", "")
    if name != "raw_totals":
        assert "`local-demo.ads.advertiser_accounts`" in sql
        for kpi in ("ctr", "cpc", "cpm", "cpa", "cvr"):
            assert f"AS {kpi}" in sql
        assert sql.count("SAFE_DIVIDE") == 5


def test_month_to_date_filters_each_branch_from_first_of_month() -> None:
    sql = render("mtd_advertiser_media", "local-demo", "ads", MEDIA)
    assert sql.count("WHERE date BETWEEN DATE_TRUNC(@date, MONTH) AND @date") == len(MEDIA)
    assert render("daily_campaign", "local-demo", "ads", MEDIA).count("WHERE date BETWEEN @first AND @last") == \
        len(MEDIA)


@pytest.mark.parametrize("bad", ["meta`; DROP TABLE x; --", "Meta", "me ta", "", "x" * 64])
def test_hostile_media_names_are_rejected(bad: str) -> None:
    with pytest.raises(ConfigError):
        render("daily_campaign", "local-demo", "ads", ["meta", bad])


def test_hostile_dataset_project_and_unknown_query_are_rejected() -> None:
    with pytest.raises(ConfigError):
        table_ref("local-demo", "ads`.x", "raw_meta")
    with pytest.raises(ConfigError):
        table_ref("Local Demo", "ads", "raw_meta")
    with pytest.raises(ConfigError):
        render("../../etc/passwd", "local-demo", "ads", MEDIA)
    with pytest.raises(ConfigError):
        render("daily_campaign", "local-demo", "ads", [])


def _row(spend: str, imps: int = 10) -> Row:
    return Row(date(2026, 1, 31), "meta", "1", "c", 'A "quoted", name', imps, 1, D(spend), D("0.5"), "JPY")


def test_totals_from_rows_and_csv_agree_exactly() -> None:
    rows = [_row("0.1"), _row("0.2"), _row("12345678901234.123456789", 0)]
    a, b = Totals.from_rows(rows), Totals.from_csv(rows_to_csv(rows))
    assert a == b == Totals(3, 20, 3, D("12345678901234.423456789"), D("1.5"))
    assert Totals.from_csv(rows_to_csv([])) == Totals()
    with pytest.raises(DataError):
        Totals.from_csv(b"date,media\n2026-01-31,meta\n")
    with pytest.raises(DataError, match="line 2"):
        Totals.from_csv(rows_to_csv(rows).replace(b",10,1,", b",ten,1,", 1))


def test_reconcile_reports_every_hop_with_numbers() -> None:
    t = Totals(3, 20, 3, D("1.5"), D("1"))
    assert reconcile(t, t, t, Totals(2, 20, 3, D("1.5"), D("1"))).ok  # mart rows are per campaign
    bad = reconcile(t, t, Totals(2, 20, 3, D("1.5"), D("1")), Totals(2, 20, 3, D("1.4"), D("1")))
    assert not bad.ok
    assert "rows: gcs=3 bigquery=2" in bad.detail and "spend: bigquery=1.5 mart=1.4" in bad.detail
    assert "not checked" in reconcile(None, t, t, t).detail
