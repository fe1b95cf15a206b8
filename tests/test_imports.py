"""The package's module-level imports form no cycle, and `import converters` stays light.

Imports inside functions are the documented way to defer a heavy dependency (torch, ml_dtypes,
a framework) or to reach a module that itself imports the caller; they are not edges here. A
cycle among module-level imports makes import order matter (a half-initialised module raises
ImportError depending on which side is imported first), so none is allowed.
"""
import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "converters"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def module_level_imports(tree):
    """Import statements run at import time: top level, and inside top-level if/try blocks."""
    todo = list(tree.body)
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, (ast.If, ast.Try)):
            todo += node.body + node.orelse + getattr(node, "finalbody", []) + \
                [s for h in getattr(node, "handlers", []) for s in h.body]


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        edges = set()
        for node in module_level_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [mod] + [f"{mod}.{a.name}" for a in node.names]
            else:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            for t in targets:
                while t and t not in files:  # `from .x import name`: the module x
                    t = t.rpartition(".")[0]
                if t and t != name:
                    edges.add(t)
                    parent = t.rpartition(".")[0]
                    while parent:  # importing a.b.c runs a/__init__ and a/b/__init__ first
                        if parent != name and not name.startswith(parent + "."):
                            edges.add(parent)
                        parent = parent.rpartition(".")[0]
        graph[name] = edges
    return graph


def find_cycle(graph):
    state, stack = {}, []

    def visit(n):
        state[n] = "open"
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == "open":
                return stack[stack.index(m):] + [m]
            if m not in state and (found := visit(m)):
                return found
        stack.pop()
        state[n] = "done"
        return None

    for n in sorted(graph):
        if n not in state and (found := visit(n)):
            return found
    return None


def test_the_graph_is_built_from_the_real_tree():
    graph = import_graph()
    assert "converters.convert" in graph and "converters.mapping.spec" in graph["converters.convert"]


def test_module_level_imports_have_no_cycle():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_import_converters_stays_light():
    code = ("import sys, converters; heavy = [m for m in ('torch', 'ml_dtypes', 'tensorflow', 'onnx', 'h5py') "
            "if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
