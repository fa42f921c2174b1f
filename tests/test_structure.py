"""The package's shape: no import circles among its modules (imports inside functions count too),
the core library never imports the command line, and nothing installs under a common top-level
name."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# source folder -> the package it installs as (setup.py's package_dir)
PACKAGES = {"supsup_hopfield": "supsup_hopfield", "compression": "supsup_hopfield.compression",
            "cli": "supsup_hopfield.cli"}


def _module_graph() -> dict:
    graph = {}
    for folder, pkg in PACKAGES.items():
        for path in (ROOT / folder).glob("*.py"):
            name = f"{pkg}.{path.stem}" if path.stem != "__init__" else pkg
            deps = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    mods = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
                elif isinstance(node, ast.Import):
                    mods = [a.name for a in node.names]
                else:
                    continue
                deps |= {m for m in mods if m.split(".")[0] == "supsup_hopfield"}
            graph[name] = deps
    return {m: {d for d in deps if d in graph and d != m} for m, deps in graph.items()}


def test_no_import_circles():
    graph = _module_graph()
    assert {"supsup_hopfield.packed", "supsup_hopfield.cli.main", "supsup_hopfield.compression.codecs"} <= set(graph)
    assert len(graph) > 25
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
        if not m.startswith("supsup_hopfield.cli"):
            assert not {d for d in deps if d.startswith("supsup_hopfield.cli")}, m


def test_only_supsup_hopfield_is_installed_at_the_top_level():
    """cli/ and compression/ install as supsup_hopfield.cli and supsup_hopfield.compression."""
    setup = (ROOT / "setup.py").read_text()
    tree = ast.parse(setup)
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "setup")
    kw = {k.arg: ast.literal_eval(k.value) for k in call.keywords if k.arg in ("packages", "package_dir")}
    assert {p.split(".")[0] for p in kw["packages"]} == {"supsup_hopfield"}
    assert kw["package_dir"] == {f"supsup_hopfield.{d}": d for d in ("cli", "compression")}
    import supsup_hopfield.cli.main
    import supsup_hopfield.compression.codecs
    assert Path(supsup_hopfield.compression.codecs.__file__).parent.name == "compression"
