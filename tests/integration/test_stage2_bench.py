"""The publish benchmark helper runs and leaves nothing behind (numbers are for `make bench`)."""

from __future__ import annotations

import sqlalchemy as sa

from bench.publish import bench_publish


def test_bench_publish_small(pg_url: str) -> None:
    result = bench_publish(pg_url, rows=500)
    assert result.rows == 500 and result.publish_rows_per_s > 0 and result.copy_rows_per_s > 0
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:
        left = conn.execute(sa.text("SELECT count(*) FROM information_schema.schemata "
                                    "WHERE schema_name LIKE 'bench_%'")).scalar_one()
    engine.dispose()
    assert left == 0
