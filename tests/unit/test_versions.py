"""API versions against their sunset dates, connector options and credentials, all at load."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from ingest.cli import main
from ingest.config import load_config, parse_config
from ingest.errors import ConfigError
from ingest.media.meta import VERSIONS as META_VERSIONS
from ingest.media.versions import check_version
from tests.unit.test_config import write

TODAY = date(2026, 11, 30)


@pytest.mark.parametrize(("media", "version", "words"), [
    ("meta", "v21.0", ["v21.0 was sunset on 2025-09-09", "use v27.0"]),
    ("meta", "v24.0", ["sunset on 2026-11-10"]),
    ("google_ads", "v21", ["v21 was sunset on 2026-08-05", "use v26"]),
    ("google_ads", "v22", ["sunset on 2026-10-07"]),
    ("google_ads", "v23", ["not supported by this connector"]),
    ("yahoo_ads", "v17", ["not supported by this connector", "use v20"]),
    ("meta", "v99.0", ["not supported"]),
])
def test_a_stale_pin_is_refused_at_load_naming_the_sunset(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                           media: str, version: str, words: list[str]) -> None:
    path = write(tmp_path, lambda raw: raw["media"][media].update(api_version=version))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: media.{media}.api_version:" in str(err.value)
    for word in words:
        assert word in str(err.value)
    assert main(["--config", str(path), "run", "--date", "2026-11-01"]) == 2
    assert f"media.{media}.api_version" in capsys.readouterr().err


def test_defaults_are_the_current_versions(tmp_path: Path) -> None:
    def unpin(raw: dict[str, Any]) -> None:
        for settings in raw["media"].values():
            settings.pop("api_version", None)

    cfg = load_config(write(tmp_path, unpin))
    assert {m: s.api_version for m, s in cfg.media.items()} == \
        {"meta": "v27.0", "google_ads": "v26", "yahoo_ads": "v20"}


def test_accepted_previous_versions_load(tmp_path: Path) -> None:
    def older(raw: dict[str, Any]) -> None:
        raw["media"]["meta"]["api_version"] = "v26.0"
        raw["media"]["google_ads"]["api_version"] = "v25"

    cfg = load_config(write(tmp_path, older))
    assert cfg.media["meta"].api_version == "v26.0" and cfg.media["google_ads"].api_version == "v25"


def test_a_version_within_60_days_of_its_sunset_warns() -> None:
    assert check_version(META_VERSIONS, "v25.0", TODAY, "Meta").warning is None  # 85 days left
    check = check_version(META_VERSIONS, "v25.0", date(2027, 1, 1), "Meta")
    assert check.error is None and check.warning and "sunsets on 2027-02-23, in 53 days" in check.warning
    assert check_version(META_VERSIONS, "v25.0", date(2027, 2, 23), "Meta").error  # the day itself: gone


def test_the_warning_is_logged_at_load(tmp_path: Path) -> None:
    import yaml

    raw = yaml.safe_load(write(tmp_path, lambda r: r["media"]["meta"].update(api_version="v25.0")).read_text())
    with capture_logs() as logs:
        parse_config(raw, "x.yaml", today=date(2027, 1, 10))
    assert any(e["event"] == "api_version_sunset_soon" and "v25.0" in e["detail"] for e in logs)


@pytest.mark.parametrize(("media", "options", "field", "words"), [
    ("meta", {"modee": "async"}, "options.modee", ["unknown option", "mode"]),
    ("meta", {"mode": "fast"}, "options", ["mode must be 'sync' or 'async'"]),
    ("meta", {"page_limit": 0}, "options", ["page_limit must be a positive integer"]),
    ("google_ads", {"login_customer_id": "12-ab"}, "options", ["login_customer_id must be digits"]),
    ("yahoo_ads", {"currency": "yen"}, "options", ["ISO 4217"]),
    ("yahoo_ads", {"reportIncludeZeroImpressions": True}, "options.reportIncludeZeroImpressions", ["unknown option"]),
])
def test_connector_options_are_validated_at_load(tmp_path: Path, media: str, options: dict[str, Any],
                                                 field: str, words: list[str]) -> None:
    path = write(tmp_path, lambda raw: raw["media"][media].update(options=options))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"{path}: media.{media}.{field}" in str(err.value)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize(("media", "credentials", "words"), [
    ("google_ads", {"developer_token": "D"}, ["missing access_token (or refresh_token, client_id, client_secret)"]),
    ("google_ads", {"refresh_token": "R", "client_id": "C", "developer_token": "D"}, ["missing client_secret"]),
    ("google_ads", {"access_token": "A", "refresh_token": "R", "client_id": "C", "client_secret": "S",
                    "developer_token": "D"}, ["either access_token or refresh_token"]),
    ("meta", {"refresh_token": "R", "client_id": "C", "client_secret": "S"},
     ["missing access_token", "unknown credential"]),
    ("yahoo_ads", {"acess_token": "A"}, ["unknown credential 'acess_token'"]),
])
def test_credential_names_are_checked_at_load(tmp_path: Path, media: str, credentials: dict[str, str],
                                              words: list[str]) -> None:
    env = {k: k.upper() for k in credentials}
    path = write(tmp_path, lambda raw: raw["media"][media].update(credentials=env))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert f"media.{media}.credentials" in str(err.value)
    for word in words:
        assert word in str(err.value)
