"""A supervisor process imports the actor module and never writes to GCS: it must not pay for the
google-cloud-storage stack (≈0.1 s of CPU per process per night; see ingest.storage)."""

from __future__ import annotations

import subprocess
import sys


def test_the_actor_module_does_not_import_the_gcs_client_libraries() -> None:
    heavy = ("google.cloud", "google.api_core", "google.auth")  # requests comes with ray itself
    probe = ("import sys, ingest.supervision.actors, ingest.storage; "
             f"print(sorted(m for m in sys.modules if m.startswith({heavy})))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
