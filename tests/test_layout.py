"""The package's import graph: no cycles (function-level imports count), and the layers point down
the pipeline (kernels <- data <- train <- model <- serving <- app), never up."""

import ast
from pathlib import Path

import pytest

import fastcofi

PACKAGE = Path(fastcofi.__file__).parent


def _module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules():
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _resolve(module, is_package, node):
    """The fastcofi modules one ``import`` / ``from ... import`` statement reaches."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] == "fastcofi"]
    if node.level == 0:
        base = node.module or ""
        if base.split(".")[0] != "fastcofi":
            return []
    else:
        package = module if is_package else module.rpartition(".")[0]
        parts = package.split(".")
        base = ".".join(parts[: len(parts) - node.level + 1])
        if node.module:
            base = f"{base}.{node.module}"
    return [base] + [f"{base}.{a.name}" for a in node.names]


def import_graph():
    """``{module: set of fastcofi modules it imports}``, counting imports inside functions."""
    modules = _modules()
    graph = {}
    for name, path in modules.items():
        is_package = path.name == "__init__.py"
        targets = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                # "from .kernels import sparse" names a module; "from .x import f" a name in x.
                targets.update(t for t in _resolve(name, is_package, node) if t in modules)
        targets.discard(name)
        graph[name] = targets
    return graph


def _without_parents(graph):
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a.b/__init__`` too, but those edges are
    Python's, not the module's: a package's own modules may import their package's names."""
    return {m: {t for t in ts if not m.startswith(t + ".")} for m, ts in graph.items()}


def cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_cycle_finder_finds_a_planted_loop():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_function_level_imports():
    graph = import_graph()
    # fastcofi.data.movielens reads a fetched release with the reader inside load().
    assert "fastcofi.data.read" in graph["fastcofi.data.movielens"]


def test_no_import_cycles():
    assert cycles(_without_parents(import_graph())) == []


# What each layer may import, besides itself; everything else in the package is above it.
LAYERS = {
    "fastcofi.kernels": set(),
    "fastcofi.data": {"fastcofi.kernels", "fastcofi._parallel", "fastcofi._npzfile"},
    "fastcofi.train": {"fastcofi.kernels", "fastcofi.data", "fastcofi._parallel", "fastcofi._npzfile"},
}


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_layers_import_only_below_themselves(layer):
    allowed = LAYERS[layer] | {layer}
    graph = _without_parents(import_graph())
    upward = {
        (m, t)
        for m, ts in graph.items() if m == layer or m.startswith(layer + ".")
        for t in ts if t != "fastcofi" and not any(t == a or t.startswith(a + ".") for a in allowed)
    }
    assert upward == set()


def test_no_module_is_long():
    lengths = {p.name: len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert {name: n for name, n in lengths.items() if n > 700} == {}
