"""``row_values``: the publisher's dict row → COPY row conversion (fast path and its fallback)."""

from __future__ import annotations

from aggregations.publish import row_values


def test_values_follow_the_column_order_and_ignore_extra_keys() -> None:
    values = row_values(["b", "a"])
    assert values({"a": 1, "b": 2, "extra": 3}) == (2, 1)


def test_a_missing_column_is_null() -> None:
    values = row_values(["a", "b", "c"])
    assert values({"a": 1, "c": 3}) == (1, None, 3)
    assert values({"a": 1, "b": 2, "c": 3}) == (1, 2, 3)  # the fast path after a slow one


def test_one_column_still_gives_a_tuple() -> None:
    values = row_values(["date"])
    assert values({"date": "2026-01-31", "media": "meta"}) == ("2026-01-31",)
    assert values({}) == (None,)
