"""A bad config names the file and the field, exits 2, and starts nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ingest.cli import main
from ingest.config import check_account, check_name, load_config
from ingest.errors import ConfigError

LOCAL = Path(__file__).resolve().parents[2] / "config" / "local.yaml"


def write(tmp_path: Path, mutate) -> Path:  # type: ignore[no-untyped-def]
    raw = yaml.safe_load(LOCAL.read_text())
    mutate(raw)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _drop_bucket(raw: dict) -> None:
    del raw["gcs"]["bucket"]


def _wrong_type(raw: dict) -> None:
    raw["media"]["meta"]["retry"]["max_attempts"] = "many"


def _unknown_media(raw: dict) -> None:
    raw["media"]["tiktok"] = {**raw["media"]["meta"], "connector": "tiktok"}


def _hostile_account(raw: dict) -> None:
    raw["media"]["meta"]["accounts"][0]["id"] = "../../etc"


def _hostile_media_name(raw: dict) -> None:
    raw["media"]["me`ta"] = raw["media"].pop("meta")


def _dataset_quote(raw: dict) -> None:
    raw["bigquery"]["dataset"] = "ads'; DROP TABLE x; --"


def _token_in_url(raw: dict) -> None:
    raw["media"]["meta"]["base_url"] = "http://127.0.0.1:8701/?access_token=abc"


@pytest.mark.parametrize(
    ("mutate", "field", "message"),
    [
        (_drop_bucket, "gcs.bucket", "required field is missing"),
        (_wrong_type, "media.meta.retry.max_attempts", "valid integer"),
        (_unknown_media, "media.tiktok.connector", "unknown connector 'tiktok'"),
        (_hostile_account, "media.meta.accounts.0.id", "'../../etc' is not allowed"),
        (_hostile_media_name, "media.me`ta", "is not allowed"),
        (_dataset_quote, "bigquery.dataset", "is not allowed"),
        (_token_in_url, "media.meta.base_url", "without credentials or query"),
    ],
)
def test_bad_config_exits_2_naming_file_and_field(  # type: ignore[no-untyped-def]
        tmp_path: Path, capsys: pytest.CaptureFixture[str], mutate, field: str, message: str) -> None:
    path = write(tmp_path, mutate)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: {field}" in str(err.value) and message in str(err.value)
    code = main(["--config", str(path), "run", "--date", "2026-11-01"])
    assert code == 2
    stderr = capsys.readouterr().err
    assert str(path) in stderr and field in stderr
    assert not (tmp_path / ".sandbox").exists()  # nothing was started or created


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    assert main(["--config", str(tmp_path / "nope.yaml"), "run"]) == 2
    bad = tmp_path / "bad.yaml"
    bad.write_text("media: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_missing_credential_env_is_a_config_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("META_ACCESS_TOKEN", raising=False)
    cfg_path = write(tmp_path, lambda raw: raw.update(database={"url": f"sqlite:///{tmp_path}/l.db", "url_env": None}))
    assert main(["--config", str(cfg_path), "run", "--date", "2026-11-01"]) == 2
    assert "META_ACCESS_TOKEN is not set" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["../x", "a b", "a'b", "a`b", "A-B", "", "x" * 80])
def test_names_reject_hostile_values(value: str) -> None:
    with pytest.raises(ConfigError):
        check_name(value)


@pytest.mark.parametrize("value", ["../x", "a b", "a'b", "a/b", "", "a`"])
def test_accounts_reject_hostile_values(value: str) -> None:
    with pytest.raises(ConfigError):
        check_account(value)


def test_both_profiles_validate() -> None:
    assert load_config(LOCAL).media_names() == ["meta", "google_ads", "yahoo_ads"]
    prod = load_config(LOCAL.parent / "pipeline.yaml")
    assert prod.gcs.endpoint is None and prod.bigquery.endpoint is None  # real endpoints in production


def test_future_date_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--config", str(LOCAL), "run", "--date", "2999-01-01"]) == 2
    assert "in the future" in capsys.readouterr().err
