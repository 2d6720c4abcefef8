"""kn_lib's imports go one way: no cycle, the science never imports the run machinery or the book,
and the stage registry imports none of the stages that register into it.

Every ``import`` statement counts, also those inside functions (a lazy import is still a dependency).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "kn_lib"

SCIENCE = ("kn_lib.data", "kn_lib.sources", "kn_lib.model_files", "kn_lib.adapters", "kn_lib.models", "kn_lib.model_registry",
           "kn_lib.attribution", "kn_lib.attribution_batched", "kn_lib.refine", "kn_lib.pipeline", "kn_lib.bingrel", "kn_lib.blimp",
           "kn_lib.experiments")
BOOK = ("kn_lib.book", "kn_lib.book.claims", "kn_lib.book.plots", "kn_lib.book.paper")
STAGE_DEFINITIONS = ("kn_lib.run.search_stages", "kn_lib.run.experiment_stages", "kn_lib.run.critique_stages")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the kn_lib modules it imports (anywhere in the file)."""
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([node.module] if node.module else []))
                targets = {f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in files}  # submodules
                found |= targets or {base}
        graph[name] = {m for m in found if m in files and m != name}
    return graph


def is_under(module: str, prefixes: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


def test_no_import_cycle():
    graph = import_graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_science_imports_neither_run_nor_book():
    graph = import_graph()
    bad = {m: sorted(t for t in targets if is_under(t, ("kn_lib.run", *BOOK)))
           for m, targets in graph.items() if is_under(m, SCIENCE)}
    assert not {m: t for m, t in bad.items() if t}


def test_registry_and_store_import_no_stage_definition():
    graph = import_graph()
    for module in ("kn_lib.run.registry", "kn_lib.run.store"):
        assert not graph[module] & set(STAGE_DEFINITIONS), module
    assert not {t for t in graph["kn_lib.run.store"] if t.startswith("kn_lib.run")}  # the store is the run's bottom layer


def test_graph_sees_the_run_package():
    graph = import_graph()
    assert "kn_lib.run.registry" in graph["kn_lib.run.search_stages"]
    assert {"kn_lib.run.search_stages", "kn_lib.run.experiment_stages"} <= graph["kn_lib.run"]
    assert "kn_lib.run.results" in graph["kn_lib.book"]
