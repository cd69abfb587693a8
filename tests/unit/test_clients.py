"""The cloud clients read the environment's proxy settings once, for their host, not per request."""

from __future__ import annotations

import pytest

from ingest.clients import gcs_client
from ingest.config import GcsSettings


def test_gcs_client_keeps_the_environments_proxy_but_reads_it_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "unset-after-the-test")  # gcs_client sets it; restored after
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    session = gcs_client(GcsSettings(bucket="ingest-raw", endpoint="http://gcs.internal:4443"), "p")._http
    assert session.trust_env is False  # requests would re-read os.environ on every upload
    assert session.proxies.get("http") == "http://proxy.internal:3128"


def test_gcs_client_honours_no_proxy_for_its_host(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "unset-after-the-test")  # gcs_client sets it; restored after
    monkeypatch.setenv("HTTP_PROXY", "http://proxy.internal:3128")
    monkeypatch.setenv("NO_PROXY", "gcs.internal")
    session = gcs_client(GcsSettings(bucket="ingest-raw", endpoint="http://gcs.internal:4443"), "p")._http
    assert "http" not in session.proxies


@pytest.mark.parametrize(("endpoint", "verify"), [
    ("https://gcs.internal:4443", "/etc/corp/ca.pem"),  # TLS: the environment's CA bundle is kept
    ("http://gcs.internal:4443", True),  # plain http (the emulator): no bundle to stat() on every upload
])
def test_gcs_client_keeps_the_ca_bundle_where_tls_uses_it(monkeypatch: pytest.MonkeyPatch, endpoint: str,
                                                          verify: object) -> None:
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "unset-after-the-test")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/corp/ca.pem")
    session = gcs_client(GcsSettings(bucket="ingest-raw", endpoint=endpoint), "p")._http
    assert session.verify == verify
