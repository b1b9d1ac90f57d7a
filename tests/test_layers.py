"""The layer contract: each part of graphkit imports only parts below it, never above.

Every import counts, function-level ones too (they hide cycles, they do not remove them).
A new module goes into LAYERS where it belongs; an import that breaks the order fails
here, naming the file and the edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "graphkit"

# lowest first; a unit may import its own modules and any unit of a lower layer
LAYERS = [
    {"errors", "validation", "scratch", "metrics", "logs", "weights"},
    {"model"},
    {"irgraph"},
    {"runtime"},
    {"passes", "pose"},
    {"pipeline", "inspect", "data"},
    {"demo"},
    {"quant"},
    {"backends"},
    {"evaluators"},
    {"commands"},
    {"cli", "__main__"},
]
RANK = {unit: i for i, layer in enumerate(LAYERS) for unit in layer}


def unit_of(module: str) -> str:
    """graphkit.quant.qdq -> quant; graphkit.model -> model."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "graphkit"


def _runtime_nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:` (imports for annotations only)."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            todo.extend(node.orelse)
            continue
        yield node
        todo.extend(ast.iter_child_nodes(node))


def imports(path: Path) -> list[tuple[str, int]]:
    """(graphkit module, line) of every import in a file, `from graphkit import x` as
    graphkit.x."""
    out = []
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(a.name, node.lineno) for a in node.names if a.name.startswith("graphkit")]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module == "graphkit":  # __version__ and the like: the package itself
                out += [
                    (f"graphkit.{a.name}", node.lineno) for a in node.names if "__" not in a.name
                ]
            elif node.module.startswith("graphkit."):
                out.append((node.module, node.lineno))
    return out


def violations() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent)
        if rel.as_posix() == "graphkit/__init__.py":
            continue  # the lazy public API re-exports from every layer
        src = unit_of(".".join(rel.with_suffix("").parts))
        for module, line in imports(path):
            dst = unit_of(module)
            if dst == src:
                continue
            if src not in RANK or dst not in RANK:
                bad.append(f"{rel}:{line}: {src} or {dst} is in no layer (add it to LAYERS)")
            elif RANK[dst] > RANK[src]:
                bad.append(f"{rel}:{line}: {src} imports {module}, a higher layer")
    return bad


def test_every_import_points_down_the_layers():
    assert violations() == []


def test_the_check_catches_an_upward_import(tmp_path, monkeypatch):
    fake = tmp_path / "graphkit"
    (fake / "runtime").mkdir(parents=True)
    (fake / "runtime" / "x.py").write_text("def f():\n    from graphkit.quant import qdq\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert violations() == [
        "graphkit/runtime/x.py:2: runtime imports graphkit.quant, a higher layer"
    ]


def module_graph() -> dict[str, set[str]]:
    """graphkit module -> the graphkit modules it imports at run time (any depth of the
    file; `from pkg import sub` counts as importing pkg.sub)."""
    mods = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        mods[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    graph: dict[str, set[str]] = {m: set() for m in mods}
    for mod, path in mods.items():
        if mod == "graphkit":
            continue
        for node in _runtime_nodes(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                subs = [f"{node.module}.{a.name}" for a in node.names]
                names = [s for s in subs if s in mods] or [node.module]
            graph[mod] |= {n for n in names if n in mods and n not in (mod, "graphkit")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(u: str) -> None:
        state[u] = 1
        stack.append(u)
        for v in sorted(graph[u]):
            if state.get(v) == 1:
                found.append([*stack[stack.index(v) :], v])
            elif v not in state:
                visit(v)
        stack.pop()
        state[u] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)
    return found


def test_no_module_imports_itself_through_others():
    assert cycles(module_graph()) == []


def test_the_cycle_check_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]
