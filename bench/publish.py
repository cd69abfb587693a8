"""Publish throughput on PostgreSQL: ``Publisher.replace`` vs a bare COPY of the same rows.

Called by the ``make bench`` harness: ``bench_publish(url, rows=100_000)`` returns rows/s
for both, so the cost of the transactional publish (DELETE the affected keys, COPY into the
mart table) over the raw COPY floor is visible. Each is timed ``ROUNDS`` times, in the order
publish, COPY, COPY, publish, publish, COPY, each time into an empty table of its own after a
CHECKPOINT, and its fastest run kept: the two share the server's page cache, WAL and
checkpoints, and a single run of each favoured whichever went second (the ratio moved
0.68–0.98 between runs of the same code). It works in its own schema and drops it afterwards.
"""

from __future__ import annotations

import operator
import random
import time
import uuid
from dataclasses import dataclass
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

import sqlalchemy as sa

from aggregations.mart import columns, create_mart, mart_daily_campaign
from aggregations.publish import Publisher

MEDIA = ("meta", "google_ads", "yahoo_ads")
#: timed runs of each; the server's CPU is the bound and moved ±15 % between runs of one kind
ROUNDS = 3


@dataclass(frozen=True, slots=True)
class PublishBench:
    rows: int
    publish_s: float
    copy_s: float
    publish_runs_s: tuple[float, ...] = ()
    copy_runs_s: tuple[float, ...] = ()

    @property
    def publish_rows_per_s(self) -> float:
        return self.rows / self.publish_s if self.publish_s else float("inf")

    @property
    def copy_rows_per_s(self) -> float:
        return self.rows / self.copy_s if self.copy_s else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "publish_rows_per_s": round(self.publish_rows_per_s, 1),
                "copy_rows_per_s": round(self.copy_rows_per_s, 1),
                "publish_s": round(self.publish_s, 3), "copy_s": round(self.copy_s, 3),
                "publish_runs_s": [round(x, 3) for x in self.publish_runs_s],
                "copy_runs_s": [round(x, 3) for x in self.copy_runs_s]}


def synthetic_rows(n: int, day: date = date(2026, 1, 31), seed: int = 7) -> list[dict[str, Any]]:
    """``n`` campaign rows spread over the three media and a few days ending at ``day``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        imps = rng.randint(0, 100_000)
        clicks = rng.randint(0, imps // 10 if imps else 0)
        spend = Decimal(rng.randint(0, 10_000_000)) / 100
        conv = Decimal(rng.randint(0, max(clicks // 5, 0)))
        out.append({
            "date": day - timedelta(days=i % 7), "media": MEDIA[i % 3], "account_id": f"acct{i % 50}",
            "campaign_id": f"c{i}", "advertiser": f"adv{i % 10}", "campaign_name": f"Campaign {i}", "currency": "JPY",
            "impressions": imps, "clicks": clicks, "spend": spend, "conversions": conv,
            "ctr": clicks / imps if imps else None, "cpc": float(spend) / clicks if clicks else None,
            "cpm": float(spend) * 1000 / imps if imps else None, "cpa": float(spend / conv) if conv else None,
            "cvr": float(conv) / clicks if clicks else None,
        })
    return out


def bench_publish(url: str, rows: int = 100_000) -> PublishBench:
    """Time ``Publisher.replace`` of ``rows`` rows and a bare COPY of them, ``ROUNDS`` times
    each (see the module doc), each into an empty table."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    schema = "bench_" + uuid.uuid4().hex[:8]
    admin = sa.create_engine(url)
    with admin.begin() as conn:
        conn.exec_driver_sql(f'CREATE SCHEMA "{schema}"')
    engine = sa.create_engine(url, connect_args={"options": f"-csearch_path={schema}"})
    try:
        create_mart(engine)
        data = synthetic_rows(rows)
        keys = {(r["date"], r["media"]) for r in data}
        names = columns(mart_daily_campaign)
        cols = ", ".join(f'"{n}"' for n in names)
        pick = operator.itemgetter(*names)  # the fastest way from a dict row to a COPY row

        def checkpoint() -> None:
            # Each run starts with no dirty pages or WAL of the run before: 1,000,000 rows write
            # ~0.4 GB of WAL, so without it whichever run crossed max_wal_size paid a checkpoint.
            try:
                with admin.connect() as conn:
                    conn.execution_options(isolation_level="AUTOCOMMIT").exec_driver_sql("CHECKPOINT")
            except sa.exc.DBAPIError:  # not a superuser (or pg_checkpoint): runs stay comparable in order
                pass

        def publish() -> float:
            with engine.begin() as conn:  # an empty mart table, as on the first night of a date
                conn.exec_driver_sql(f'TRUNCATE "{mart_daily_campaign.name}"')
            checkpoint()
            started = time.perf_counter()
            Publisher(engine).replace(mart_daily_campaign, data, ("date", "media"), keys)
            return time.perf_counter() - started

        def copy(i: int) -> float:
            table = f"copy_target_{i}"
            with engine.begin() as conn:
                conn.exec_driver_sql(f'CREATE TABLE "{table}" (LIKE "{mart_daily_campaign.name}" INCLUDING ALL)')
            checkpoint()
            started = time.perf_counter()
            with engine.begin() as conn:
                driver = conn.connection.driver_connection
                assert driver is not None
                with driver.cursor() as cur, cur.copy(f'COPY "{table}" ({cols}) FROM STDIN') as cp:
                    for r in data:
                        cp.write_row(pick(r))
            return time.perf_counter() - started

        pubs: list[float] = []
        copies: list[float] = []
        for i in range(ROUNDS):  # publish, COPY, COPY, publish, publish, COPY: neither always goes first
            if i % 2 == 0:
                pubs.append(publish())
                copies.append(copy(i))
            else:
                copies.append(copy(i))
                pubs.append(publish())
        return PublishBench(rows, min(pubs), min(copies), tuple(pubs), tuple(copies))
    finally:
        engine.dispose()
        with admin.begin() as conn:
            conn.exec_driver_sql(f'DROP SCHEMA "{schema}" CASCADE')
        admin.dispose()


if __name__ == "__main__":  # python -m bench.publish [URL] [ROWS]
    import json
    import sys

    target = sys.argv[1] if len(sys.argv) > 1 else "postgresql+psycopg://postgres@127.0.0.1:5432/test"
    print(json.dumps(bench_publish(target, int(sys.argv[2]) if len(sys.argv) > 2 else 100_000).as_dict()))
