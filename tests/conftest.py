"""Shared fixtures: the real emulators on free ports, per-test config, SQLite and PostgreSQL.

PostgreSQL: tests marked ``postgres`` use ``$TEST_DATABASE_URL`` or 127.0.0.1:5432/test. When
it is not reachable they skip with a clear message on a developer's machine, and FAIL when
``INGEST_REQUIRE_POSTGRES=1`` (set by ``.ci/run``). Each test gets its own schema.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from ingest.config import PipelineConfig, load_config
from sandbox.cli import SANDBOX_CREDENTIALS
from sandbox.oauth_sim import TOKEN_ENDPOINTS
from sandbox.stack import LocalStack, StackSpec, free_port

REPO = Path(__file__).resolve().parent.parent
LOCAL_CONFIG = REPO / "config" / "local.yaml"
MEDIA = ("meta", "google_ads", "yahoo_ads")
PG_URL = os.environ.get("TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _start(tmp_path_factory: pytest.TempPathFactory, name: str, sims: bool) -> Iterator[LocalStack]:
    root = tmp_path_factory.mktemp(name)
    spec = StackSpec(
        root=root,
        project="local-demo",
        gcs_port=free_port(),
        bq_port=free_port(),
        bq_grpc_port=free_port(),
        sim_ports={m: free_port() for m in MEDIA} if sims else {},
        seed=7,
        fault_rate=0.0,
        latency_ms=0,
    )
    stack = LocalStack(spec)
    stack.up()
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ.update(stack.env())
    try:
        yield stack
    finally:
        stack.down()
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """fake-gcs-server + bqemulator only (stage-2 and storage tests)."""
    yield from _start(tmp_path_factory, "emulators", sims=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalStack]:
    """The whole local stack, simulators included (end-to-end tests)."""
    yield from _start(tmp_path_factory, "stack", sims=True)


@pytest.fixture(autouse=True)
def _sandbox_tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for var, value in SANDBOX_CREDENTIALS.items():
        monkeypatch.setenv(var, os.environ.get(var, value))
    monkeypatch.delenv("DATABASE_URL", raising=False)


def _pg_available() -> str | None:
    try:
        engine = sa.create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("select 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not available"
        return f"{type(exc).__name__}: {str(exc).splitlines()[0]}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL whose search_path is a fresh schema, dropped afterwards."""
    problem = _pg_available()
    if problem:
        if os.environ.get("INGEST_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL required (INGEST_REQUIRE_POSTGRES=1) but not reachable at {PG_URL}: {problem}")
        pytest.skip(f"PostgreSQL not reachable at {PG_URL} ({problem}); set TEST_DATABASE_URL to run these tests")
    schema = "t_" + uuid.uuid4().hex[:10]
    admin = sa.create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options=-csearch_path%3D{schema}"
    with admin.begin() as conn:
        conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'mart.db'}"


@pytest.fixture
def make_config(tmp_path: Path) -> Callable[..., PipelineConfig]:
    """Build a config from config/local.yaml pointed at a running stack, isolated per test.

    Each call gets its own bucket and BigQuery dataset so tests never see each other's data.
    """

    def build(stack: LocalStack, database_url: str, **overrides: Any) -> PipelineConfig:
        tag = uuid.uuid4().hex[:8]
        spec = stack.spec
        over: dict[str, Any] = {
            "gcs": {"bucket": f"test-{tag}", "endpoint": spec.gcs_endpoint},
            "bigquery": {"dataset": f"ads_{tag}", "endpoint": spec.bq_endpoint},
            "database": {"url": database_url, "url_env": None},
            "sandbox": {"root": str(spec.root), "gcs_port": spec.gcs_port, "bq_port": spec.bq_port,
                        "bq_grpc_port": spec.bq_grpc_port, "sim_ports": dict(spec.sim_ports)},
            "base_dir": str(tmp_path),
        }
        if spec.sim_ports:
            # lookback 0: each test fetches exactly its dates unless it sets lookback_days (late-data tests do)
            over["media"] = {m: {"base_url": spec.sim_url(m), "lookback_days": 0} for m in spec.sim_ports}
            for m, (path, _) in TOKEN_ENDPOINTS.items():  # the simulators' OAuth endpoints
                if m in over["media"]:
                    over["media"][m]["token_url"] = spec.sim_url(m) + path
        return load_config(LOCAL_CONFIG, _deep_merge(over, overrides))

    return build


def _deep_merge(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


@pytest.fixture(scope="session", autouse=True)
def _ray_shutdown() -> Iterator[None]:
    """Tests share one local Ray (started by the first job); shut it down at the end."""
    yield
    import sys

    if "ray" in sys.modules:
        import ray

        if ray.is_initialized():
            ray.shutdown()
