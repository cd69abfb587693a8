"""The code's own checks run with the tests: ruff (pyflakes, pycodestyle, bugbear, pyupgrade)
over everything, mypy over the product (``ingest``, ``aggregations``). Config: pyproject.toml."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    exe = Path(sys.executable).parent / name
    found = str(exe) if exe.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return found


def test_ruff() -> None:
    proc = subprocess.run([_tool("ruff"), "check", "ingest", "aggregations", "sandbox", "bench", "tests"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_mypy() -> None:
    proc = subprocess.run([_tool("mypy")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:]


def test_stage2_reads_the_csv_the_connectors_write() -> None:
    """aggregations does not import the connectors; the column list they share is checked here."""
    from aggregations.queries import RAW_COLUMNS
    from ingest.media.base import CSV_COLUMNS

    assert CSV_COLUMNS == RAW_COLUMNS
    imports = [ln for ln in (REPO / "aggregations" / "totals.py").read_text().splitlines()
               if ln.startswith(("from ", "import "))]
    assert not [ln for ln in imports if "ingest.media" in ln]
