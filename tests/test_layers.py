"""The import rules of CONTRIBUTING.md, read from the source with `ast` (nothing is imported):

- no import cycle among the project's modules;
- `mixer` imports neither `pipeline` nor `scorers` (nor the CLI);
- `scorers` imports Apache Beam only in its ModelHandler glue (`handler.py`, `*_handler.py`);
- no package imports the CLI (`datamixer`).

Every import counts, including those inside functions (a lazy import is still a dependency), except
those under `if TYPE_CHECKING:`.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("datamixer", "pipeline", "scorers", "mixer")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {
    _module_name(path): path for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))
}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported_names(module: str, path: Path) -> set[tuple[str, str | None]]:
    """Every import of `module` as (dotted module name, name imported from it or None); relative imports
    are resolved."""
    names: set[tuple[str, str | None]] = set()
    is_package = path.name == "__init__.py"

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            names.update((alias.name, None) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")
                anchor = anchor if is_package else anchor[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            names.update((base, alias.name) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return names


IMPORTS = {module: _imported_names(module, path) for module, path in MODULES.items()}


def _project_edges(module: str) -> set[str]:
    """The project modules `module` depends on: `from pkg import sub` names the submodule when there is
    one, else the longest module in the dotted name. A package's own `__init__`, which every import of one
    of its submodules runs, is not counted as an edge from that submodule."""
    edges = set()
    for base, name in IMPORTS[module]:
        if name is not None and f"{base}.{name}" in MODULES:
            edges.add(f"{base}.{name}")
            continue
        parts = base.split(".")
        for end in range(len(parts), 0, -1):
            target = ".".join(parts[:end])
            if target in MODULES:
                edges.add(target)
                break
    return {e for e in edges if e != module and not module.startswith(e + ".")}


GRAPH = {module: _project_edges(module) for module in MODULES}


def _cycles() -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for succ in sorted(GRAPH[node]):
            if succ not in index:
                connect(succ)
                low[node] = min(low[node], low[succ])
            elif succ in on_stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(GRAPH):
        if node not in index:
            connect(node)
    return found


def _importers(package: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
    bad = {}
    for module, names in IMPORTS.items():
        if module == package or module.startswith(package + "."):
            hits = sorted({base for base, _ in names if base.split(".")[0] in forbidden})
            if hits:
                bad[module] = hits
    return bad


def test_the_graph_sees_the_project():
    """The rules below are not vacuous: the graph holds the modules and the imports that do exist."""
    assert {"mixer.api", "pipeline.job", "scorers.fasttext", "datamixer.cli"} <= set(MODULES)
    assert {"mixer.budget", "mixer.exports"} <= GRAPH["mixer.api"]  # `from mixer import budget as _budget`
    assert _importers("pipeline", ("scorers",))  # the pipeline does use the scorers
    assert _importers("scorers", ("apache_beam",))  # the handlers do import Beam


def test_no_import_cycles():
    assert _cycles() == []


def test_mixer_imports_neither_pipeline_nor_scorers():
    assert _importers("mixer", ("pipeline", "scorers", "datamixer")) == {}


def _is_handler(module: str) -> bool:
    """The ModelHandler glue: `scorers/handler.py` (the one torch handler) and `scorers/*_handler.py`."""
    name = module.rsplit(".", 1)[-1]
    return name == "handler" or name.endswith("_handler")


def test_scorers_import_beam_only_in_handlers():
    bad = {
        module: names
        for module, names in _importers("scorers", ("apache_beam",)).items()
        if not _is_handler(module)
    }
    assert bad == {}


@pytest.mark.parametrize("package", ["pipeline", "scorers", "mixer"])
def test_packages_do_not_import_the_cli(package):
    assert _importers(package, ("datamixer",)) == {}
