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



def _module(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _import_time_edges(path: Path, modules: set[str]) -> set[str]:
    """Product modules imported when ``path`` is imported: module-level statements only (an
    import inside a function, or under ``if TYPE_CHECKING``, runs later or never)."""
    out: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                out.add(name)
    return out


def test_no_import_cycles_in_the_product() -> None:
    """Import-time dependencies between product modules form no cycle (a package's own
    ``__init__`` aside): each module can be understood, and imported, on its own."""
    modules = {_module(p): p for p in PRODUCT}
    graph = {m: {d for d in _import_time_edges(p, set(modules)) if d != m and not m.startswith(d + ".")}
             for m, p in modules.items()}
    assert "ingest.ledger" in graph["ingest.job"] and "ingest.outcomes" in graph["aggregations.stage2"]  # built
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(m: str, stack: list[str]) -> None:
        state[m] = 1
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                cycles.append(stack[stack.index(d):] + [d])
            elif d not in state:
                visit(d, stack + [d])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert cycles == []
