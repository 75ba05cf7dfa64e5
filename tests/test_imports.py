"""The package's layers import one way: no import cycle and no private name across modules.

Read from the source (every `import` statement, also those inside functions, which run later
but still tie two modules together), so the test needs no import and runs in milliseconds.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "text2brain"


def modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the package."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def imports(path: Path) -> Iterator[tuple[str, str]]:
    """(imported module or module.name, name) of every absolute text2brain import in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            yield from ((alias.name, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield from ((f"{node.module}.{alias.name}", alias.name) for alias in node.names)


def import_graph() -> dict[str, set[str]]:
    """module -> the package's modules it imports (a name resolves to the module holding it)."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        for target, _ in imports(path):
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name and target.startswith("text2brain"):
                graph[name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph[node]):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_cycles_are_found() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_inside_the_package() -> None:
    graph = import_graph()
    assert (
        len(graph) > 40
        and "text2brain.models.embedding_cache" in graph["text2brain.models.text_head"]
    )
    assert cycles(graph) == []


def test_no_private_name_is_imported_across_modules() -> None:
    private = [
        f"{name} imports {name_imported} from {target.rpartition('.')[0]}"
        for name, path in modules().items()
        for target, name_imported in imports(path)
        if target.startswith("text2brain")
        and name_imported.startswith("_")
        and not name_imported.startswith("__")
    ]
    assert private == []


#: The package's layers, lowest first: a module imports only from its own layer and below.
#: Utilities (no domain knowledge) -> brain space and rendering -> corpus -> data -> models ->
#: apps (training, inference, export, query, compare, bench, the command line).
LAYERS: dict[str, tuple[str, ...]] = {
    "utilities": (
        "errors", "figures", "lorentz", "metrics", "outputs", "paths", "precision", "text",
        "tokens", "validation",
    ),
    "brain": ("brain", "neuroquery_files"),
    "corpus": ("corpus",),
    "data": ("data",),
    # `checkpoint` reads checkpoints of registered heads, with no Lightning: a head made of
    # other heads (the ensemble) loads them with it.
    # `releases` names the released models (export folders installed with the package).
    "models": ("models", "checkpoint", "releases"),
    "apps": (
        "", "__main__", "bench", "callbacks", "cli", "compare", "export", "inference",
        "interop", "legacy_config", "query", "run_watch", "serve", "training",
    ),
}  # fmt: skip


def layer_of(module: str) -> int:
    """Index in LAYERS of a text2brain module (by its first name under text2brain)."""
    first = module.removeprefix("text2brain").removeprefix(".").split(".")[0]
    for index, names in enumerate(LAYERS.values()):
        if first in names:
            return index
    raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/test_imports.py")


def test_layers_import_one_way() -> None:
    graph = import_graph()
    upward = [
        f"{module} ({list(LAYERS)[layer_of(module)]}) imports {target} "
        f"({list(LAYERS)[layer_of(target)]})"
        for module, targets in graph.items()
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert upward == []


def test_an_upward_import_is_found() -> None:
    assert layer_of("text2brain.data.datamodule") < layer_of("text2brain.models.base")
    assert layer_of("text2brain") == layer_of("text2brain.cli")
