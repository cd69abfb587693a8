"""The product (``ingest``, ``aggregations``) never imports the development tools (``sandbox``,
``bench``, ``tests``): ``pip install .`` ships only the product. ``.ci/check_install`` proves the
install itself; this is the quick check a developer sees first."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PRODUCT = sorted(p for top in ("ingest", "aggregations") for p in (REPO / top).rglob("*.py"))
DEV_TOOLS = {"sandbox", "bench", "tests"}


def _imported_tops(path: Path) -> set[str]:
    tops: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            tops |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            tops.add(node.module.split(".")[0])
    return tops


@pytest.mark.parametrize("path", PRODUCT, ids=[str(p.relative_to(REPO)) for p in PRODUCT])
def test_product_code_never_imports_development_tools(path: Path) -> None:
    assert not _imported_tops(path) & DEV_TOOLS

