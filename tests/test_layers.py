"""The package's layers, read from the source (an AST walk over every import, at module level or inside
functions): no module imports a higher layer or a sibling package of its own layer, and no import cycle."""

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "dimba"

# Lower numbers are lower layers. A module may import its own package and anything of a lower layer; the
# core modules of layer 0 may also import one another (never in a cycle).
LAYERS = {
    "dimba.errors": 0, "dimba.config": 0, "dimba.precision": 0, "dimba.sampling": 0, "dimba.outputs": 0,
    "dimba.models": 1, "dimba.diffusion": 1, "dimba.data": 1,
    "dimba.training": 2,
    "dimba.eval": 3,
    "dimba.cli": 4,
    "dimba": 5,  # the package root: the Python API (dimba.load) and `python -m dimba`
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def unit(module: str) -> str:
    """The layer unit a module belongs to: its entry in LAYERS with the longest matching prefix."""
    return max((u for u in LAYERS if module == u or module.startswith(u + ".")), key=len)


def imports(path: Path) -> set[str]:
    """Every dimba module imported anywhere in the file (from-imports resolved to the module or package)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "dimba"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "dimba":
            found.add(node.module)
    return found


def import_graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in PACKAGE.rglob("*.py")}


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        own = unit(module)
        for target in targets:
            other = unit(target)
            if other == own or LAYERS[other] < LAYERS[own] or LAYERS[other] == LAYERS[own] == 0:
                continue
            bad.append(f"{module} (layer {LAYERS[own]}, {own}) imports {target} (layer {LAYERS[other]}, {other})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import cycles between modules (a package's __init__ counts as the package)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == "open":
                found.append(stack[stack.index(target):] + [target])
            elif target not in state:
                visit(target)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_no_module_imports_a_higher_layer_or_a_sibling_package():
    graph = import_graph()
    assert len(graph) > 30 and all(unit(m) in LAYERS for m in graph)
    assert layer_violations(graph) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_the_checks_catch_what_they_claim():
    """The walk itself: an upward import, a sideways one (models <-> diffusion) and a cycle are all found."""
    graph = {"dimba.models.denoiser": {"dimba.training.base"}, "dimba.diffusion.samplers": {"dimba.models.mamba2"},
             "dimba.training.a": {"dimba.training.b"}, "dimba.training.b": {"dimba.training.a"},
             "dimba.models.mamba2": set(), "dimba.training.base": set()}
    assert len(layer_violations(graph)) == 2
    assert cycles(graph) == [["dimba.training.a", "dimba.training.b", "dimba.training.a"]]
