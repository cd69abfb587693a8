"""The errors an operator meets at 3 a.m. are one line naming the resource and the fix, with
the documented exit code — never a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import sqlalchemy as sa
from google.api_core import exceptions as gexc

from ingest.cli import main
from ingest.infra_errors import explain
from ingest.job import EXIT_FAILED, EXIT_USAGE
from ingest.ledger import Ledger
from sandbox.stack import free_port

LOCAL = Path(__file__).resolve().parents[2] / "config" / "local.yaml"
PAST = "2026-11-20"


def one_line(err: str) -> str:
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize("argv", [["run", "--date", PAST], ["status", "--date", PAST], ["freshness"],
                                  ["rerun", "--failed"]])
def test_unreachable_database(argv: list[str], monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"postgresql://ingest:hunter2pass@127.0.0.1:{free_port()}/marts")
    assert main(["--config", str(LOCAL), *argv]) == EXIT_FAILED
    err = one_line(capsys.readouterr().err)
    assert "database postgresql://ingest:***@127.0.0.1" in err and "unreachable" in err
    assert "$DATABASE_URL" in err and "hunter2pass" not in err


def test_port_in_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"sqlite:///{tmp_path / 'l.db'}"
    monkeypatch.setenv("DATABASE_URL", url)
    Ledger(sa.create_engine(url)).migrate()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["--config", str(LOCAL), "ui", "--port", str(port)]) == EXIT_USAGE
    err = one_line(capsys.readouterr().err)
    assert f"port {port} on 127.0.0.1 is already in use" in err and "--port" in err


def test_missing_credential(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                            capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'l.db'}")
    monkeypatch.delenv("META_ACCESS_TOKEN", raising=False)
    assert main(["--config", str(LOCAL), "run", "--date", PAST]) == EXIT_USAGE
    err = one_line(capsys.readouterr().err)
    assert "media.meta.credentials.access_token" in err and "META_ACCESS_TOKEN is not set" in err


def test_bucket_or_dataset_missing_or_refused() -> None:
    forbidden = gexc.Forbidden("POST https://storage.googleapis.com/b: "
                               "ingest@p.iam does not have storage.objects.create")
    line = explain(forbidden, bucket="ads-raw", dataset="p.ads")
    assert line is not None and "gs://ads-raw" in line and "service account" in line
    missing = explain(gexc.NotFound("Not found: Dataset p:ads"), bucket="ads-raw", dataset="p.ads")
    assert missing is not None and "Dataset p:ads" in missing and "bigquery.dataset" in missing
    assert explain(ValueError("a bug")) is None  # our own bugs keep their traceback
