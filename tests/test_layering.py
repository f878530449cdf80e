"""Layers point one way, and no file imports another in a circle.

CLI (bench/cli.py, bench/commands/, bench/__main__.py) -> harness (the rest of bench/) -> methods/ and
protocols/ -> bench/core/. methods/ and protocols/ import nothing of bench/ but bench/core/; protocols/ import
nothing of methods/ (nor methods/ of protocols/); bench/core/ imports nothing of the project; nothing outside
the CLI imports it. Every import is read from the source (AST), those inside functions too: a first-party
import inside a function is itself a failure, since it is how a forbidden edge or a cycle hides.
"""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bench", "methods", "protocols")
# layer -> the layers it may import
ALLOWED = {
    "core": {"core"},
    "methods": {"methods", "core"},
    "protocols": {"protocols", "core"},
    "harness": {"harness", "methods", "protocols", "core"},
    "cli": {"cli", "harness", "methods", "protocols", "core"},
}


def layer(module: str) -> str:
    if module == "bench.core" or module.startswith("bench.core."):
        return "core"
    if module in ("bench.cli", "bench.__main__", "bench.commands") or module.startswith("bench.commands."):
        return "cli"
    return "harness" if module.split(".")[0] == "bench" else module.split(".")[0]


def modules(root: Path) -> dict[str, Path]:
    """Module name -> file, for every first-party source file under ``root``."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def imports(path: Path, module: str, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported first-party module, line, inside a function) for every import statement of one file."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    nested = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
              for n in ast.walk(f) if n is not f}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            # ``from a import b`` imports the module a.b when there is one, else a name of a.
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in known:  # ``import a.b.c`` of a module a.b.c, or a name inside a known module
                t = t.rpartition(".")[0]
            if t and t.split(".")[0] in PACKAGES:
                out.append((t, node.lineno, id(node) in nested))
    return out


def edges(root: Path) -> dict[str, list[tuple[str, int, bool]]]:
    mods = modules(root)
    return {m: imports(p, m, set(mods)) for m, p in mods.items()}


def violations(graph: dict[str, list[tuple[str, int, bool]]]) -> list[str]:
    out = []
    for src, targets in graph.items():
        for dst, line, inside in targets:
            if layer(dst) not in ALLOWED[layer(src)]:
                out.append(f"{src}:{line} imports {dst}: {layer(src)} may not import {layer(dst)}")
            if layer(src) == "methods" and layer(dst) == "protocols" or layer(src) == "protocols" and layer(dst) == "methods":
                out.append(f"{src}:{line} imports {dst}: methods and protocols do not import each other")
            if inside:
                out.append(f"{src}:{line} imports {dst} inside a function; import it at the top of the file")
    return out


def cycles(graph: dict[str, list[tuple[str, int, bool]]]) -> list[list[str]]:
    """Strongly connected components of more than one module, and self-imports (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w, _, _ in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or any(w == v for w, _, _ in graph.get(v, ())):
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_layers_point_one_way():
    assert violations(edges(ROOT)) == []


def test_no_import_cycles():
    assert cycles(edges(ROOT)) == []


def test_the_checker_sees_every_kind_of_import():
    graph = edges(ROOT)
    assert any(d == "methods.base" for d, _, _ in graph["methods.simclr"])
    assert any(d == "bench.core.registry" for d, _, _ in graph["methods"])  # from a package's __init__
    assert any(d == "protocols.solvers.lbfgs" for d, _, _ in graph["protocols.linear"])  # from a.b import c (module c)


@pytest.fixture
def planted(tmp_path):
    """A copy of the three packages to plant bad imports in."""
    for pkg in PACKAGES:
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def _plant(root: Path, rel: str, line: str) -> None:
    path = root / rel
    path.write_text(path.read_text() + "\n" + line + "\n")


@pytest.mark.parametrize("rel,line,expected", [
    ("methods/simclr.py", "from bench.runner import run_one", "harness"),
    ("protocols/knn.py", "import methods.base", "methods and protocols"),
    ("bench/core/registry.py", "from bench.data import Dataset", "core may not import harness"),
    ("bench/runner.py", "from bench.cli import main", "may not import cli"),
    ("protocols/kmeans.py", "def late():\n    from protocols.linear import sweep", "inside a function"),
])
def test_a_planted_bad_import_fails(planted, rel, line, expected):
    _plant(planted, rel, line)
    found = violations(edges(planted))
    assert any(expected in v for v in found), found


def test_a_planted_cycle_fails(planted):
    _plant(planted, "bench/data/__init__.py", "from bench.data.digits import digits")
    assert ["bench.data", "bench.data.digits"] in cycles(edges(planted))


def test_the_harness_never_probes_objects():
    """What the harness may ask of a method is declared on its base class (methods/base.py); bench/ asks
    ``isinstance`` of a capability, never ``hasattr``/``getattr``."""
    probes = [f"{path.relative_to(ROOT)}:{node.lineno} {node.func.id}"
              for path in sorted((ROOT / "bench").rglob("*.py"))
              for node in ast.walk(ast.parse(path.read_text()))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")]
    assert probes == []
