"""Where things live in GCS: deterministic object names, so a retried write is harmless.

    raw/{media}/dt={date}/{account}.json     every HTTP exchange of the last good fetch
    raw/{media}/dt={date}/{account}.csv      normalized rows (header + rows), what BigQuery loads
    failed/{media}/dt={date}/{account}.json  the raw exchanges of the last *failed* attempt

A report over a range of days (the nightly refetch window) keeps its exchanges at
``raw/{media}/window/{first}_{last}/{account}.json`` (``failed/...`` alike) and lands one CSV
per day at the daily name above, so BigQuery still loads one partition per date.

A re-run overwrites the same names, so GCS never holds two copies of one report; a day whose
CSV would get the bytes it already has (its digest in the ledger, ``ReportKey.landed``) is
not written again. Every name part is validated before it reaches a path (see ingest.config
patterns).

The google-cloud libraries are imported where a store is built, not here: a supervisor
process reads these names but never writes, and would pay ≈0.1 s of CPU per night for them.
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from ingest.config import check_account, check_name
from ingest.errors import Transient

if TYPE_CHECKING:
    from google.cloud import storage  # type: ignore[attr-defined]  # namespace package


@dataclass(frozen=True, slots=True)
class ReportPaths:
    bucket: str
    media: str
    account: str
    day: date
    #: the last day of a range report; None = a one-day report
    last: date | None = None

    def _base(self, kind: str, day: date | None = None) -> str:
        day = day or self.day
        return f"{kind}/{check_name(self.media, 'media')}/dt={day.isoformat()}/{check_account(self.account)}"

    def _exchanges(self, kind: str) -> str:
        if self.last is None or self.last == self.day:
            return self._base(kind) + ".json"
        return (f"{kind}/{check_name(self.media, 'media')}/window/{self.day.isoformat()}_{self.last.isoformat()}/"
                f"{check_account(self.account)}.json")

    @property
    def raw_json(self) -> str:
        return self._exchanges("raw")

    def day_csv(self, day: date) -> str:
        return self._base("raw", day) + ".csv"

    @property
    def failed_json(self) -> str:
        return self._exchanges("failed")

    def uri(self, name: str) -> str:
        return f"gs://{self.bucket}/{name}"


def partition_prefix(media: str, day: date) -> str:
    return f"raw/{check_name(media, 'media')}/dt={day.isoformat()}/"


def partition_csv_uri(bucket: str, media: str, day: date) -> str:
    """Wildcard URI of one (media, date): one BigQuery load job per partition, never per account."""
    return f"gs://{bucket}/{partition_prefix(media, day)}*.csv"


def gcs_md5(data: bytes) -> str:
    """MD5 of ``data`` in the form GCS lists an object's (``md5Hash``: base64 of the digest): a
    change check, not a security one."""
    return base64.b64encode(hashlib.md5(data, usedforsecurity=False).digest()).decode("ascii")


class ReportStore:
    """Writes and reads report objects; translates GCS client errors into our taxonomy."""

    def __init__(self, client: storage.Client, bucket: str) -> None:
        from google.api_core import exceptions  # see the module docstring

        self._gexc = exceptions
        self.client = client
        self.bucket_name = bucket
        self.bucket = client.bucket(bucket)

    def ensure_bucket(self) -> None:
        try:
            self.client.create_bucket(self.bucket_name)
        except self._gexc.Conflict:
            pass

    def put(self, name: str, data: bytes, content_type: str) -> int:
        try:
            self.bucket.blob(name).upload_from_string(data, content_type=content_type)
        except (self._gexc.ServerError, self._gexc.TooManyRequests, ConnectionError) as exc:
            raise Transient(f"GCS write of {name} failed: {type(exc).__name__}") from None
        return len(data)

    def put_json(self, name: str, doc: Any) -> int:
        return self.put(name, json.dumps(doc, ensure_ascii=False, default=str).encode("utf-8"), "application/json")

    def get(self, name: str) -> bytes:
        return self.bucket.blob(name).download_as_bytes()

    def list(self, prefix: str) -> list[str]:
        return [b.name for b in self.client.list_blobs(self.bucket_name, prefix=prefix)]

    def list_md5(self, prefix: str) -> dict[str, str]:
        """Object name → its MD5 as GCS computed it on upload (``gcs_md5`` form; "" if GCS has
        none, e.g. a composed object); the same single listing as ``list``."""
        blobs = self.client.list_blobs(self.bucket_name, prefix=prefix, fields="items(name,md5Hash),nextPageToken")
        return {b.name: b.md5_hash or "" for b in blobs}

    def delete(self, name: str) -> None:
        try:
            self.bucket.blob(name).delete()
        except self._gexc.NotFound:
            pass
