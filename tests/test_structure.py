"""The package's shape: no import circles among its modules (imports inside functions count too),
and the core library never imports the command line."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("supsup_hopfield", "compression", "cli")


def _module_graph() -> dict:
    graph = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).glob("*.py"):
            name = f"{pkg}.{path.stem}" if path.stem != "__init__" else pkg
            deps = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                deps |= {m for m in mods if m.split(".")[0] in PACKAGES}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_circles():
    graph = _module_graph()
    assert "supsup_hopfield.packed" in graph and len(graph) > 25
    done, path = set(), []

    def visit(m):
        if m in path:
            raise AssertionError("import circle: " + " -> ".join(path[path.index(m):] + [m]))
        if m in done:
            return
        path.append(m)
        for d in sorted(graph[m]):
            visit(d)
        path.pop()
        done.add(m)

    for m in sorted(graph):
        visit(m)


def test_the_core_never_imports_the_cli():
    graph = _module_graph()
    for m, deps in graph.items():
        if not m.startswith("cli"):
            assert not {d for d in deps if d.startswith("cli")}, m
