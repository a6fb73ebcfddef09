"""The layers as the code's own imports draw them: no circle inside components/ or flows/,
and nothing in components/ imports flows/ or benchmarks/. Every import counts, those inside
functions and under TYPE_CHECKING too: a lazy import is still a tie."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("components", "flows")


def _modules() -> dict[str, Path]:
    found = {}
    for top in PACKAGES:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The project modules (or packages) ``name`` imports, relative imports resolved."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            candidates = [base, *(f"{base}.{alias.name}" for alias in node.names)]
        else:
            continue
        for target in candidates:
            # the deepest project module the name falls in (a name imported from a module)
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                targets.add(target)
    return targets


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules) | {"benchmarks"}
    return {name: imports_of(name, path, known) for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in graph.get(node, ()):
            if other not in graph:
                continue
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_circles_in_components_or_flows() -> None:
    graph = import_graph()
    assert circles(graph) == []


def test_components_import_nothing_above_them() -> None:
    climbs = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.startswith("components")
        for target in targets
        if not target.startswith("components")
    ]
    assert climbs == []


def test_stages_do_not_import_each_other() -> None:
    # the pipeline's order lives in PIPELINE alone; stage modules share only the training base
    shared = {"flows.stages", "flows.stages.training"}
    ties = [
        f"{module} imports {target}"
        for module, targets in import_graph().items()
        if module.startswith("flows.stages.")
        for target in targets
        if target.startswith("flows.stages") and target not in shared
    ]
    assert ties == []


def test_the_checks_see_a_circle_and_a_climb(tmp_path: Path) -> None:
    # the detector itself: two modules that import each other are one circle
    graph = {"components.a": {"components.b"}, "components.b": {"components.a", "flows.x"}}
    assert circles(graph) == [["components.a", "components.b"]]
    lazy = tmp_path / "lazy.py"
    lazy.write_text("def f():\n    from flows.cli import main\n")
    assert imports_of("components.lazy", lazy, {"flows.cli", "components.lazy"}) == {"flows.cli"}
