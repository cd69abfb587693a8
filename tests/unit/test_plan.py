"""How a run's dates become reports: one-day reports, or ranges of consecutive days (backfill)."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from ingest.job import MAX_RANGE_DAYS, as_ranges, fetch_order
from ingest.tasks import ReportKey

D = date(2026, 11, 1)


def day(n: int, account: str = "a", media: str = "meta") -> ReportKey:
    return ReportKey(media, account, D + timedelta(days=n))


def span(first: int, n: int, account: str = "a", media: str = "meta") -> ReportKey:
    return ReportKey(media, account, D + timedelta(days=first), n)


@pytest.mark.parametrize(("keys", "expected"), [
    ([], []),
    ([day(0)], [day(0)]),
    ([day(0), day(1), day(2)], [span(0, 3)]),
    ([day(2), day(0), day(1)], [span(0, 3)]),  # the order asked in does not matter
    ([day(0), day(1), day(3), day(4)], [span(0, 2), span(3, 2)]),  # a gap (a day already done) splits
    ([day(0), day(0), day(1)], [span(0, 2)]),  # a day asked twice is fetched once
    ([day(0, "a"), day(1, "b")], [day(0, "a"), day(1, "b")]),  # accounts never share a report
    ([day(0, media="meta"), day(1, media="yahoo_ads")], [day(0, media="meta"), day(1, media="yahoo_ads")]),
    ([span(0, 5), day(6)], [span(0, 5), day(6)]),  # a range report stays as it is
])
def test_consecutive_days_of_an_account_become_one_range(keys: list[ReportKey], expected: list[ReportKey]) -> None:
    assert sorted(as_ranges(keys)) == sorted(expected)


def test_a_long_backfill_is_cut_into_ranges_the_platforms_accept() -> None:
    keys = [day(i) for i in range(70)]
    ranges = as_ranges(keys)
    assert [k.span for k in ranges] == [MAX_RANGE_DAYS, MAX_RANGE_DAYS, 70 - 2 * MAX_RANGE_DAYS]
    assert [d for k in fetch_order(ranges) for d in k.day_keys()] == keys  # every day once, in order
