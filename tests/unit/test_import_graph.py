"""The import graph of the shipped packages (fstore, jobs, services, examples): no cycles, and only downward edges.

Read from the source with :mod:`ast` (every import, also those inside functions and ``TYPE_CHECKING``
blocks), so a lazy import cannot hide a cycle. The core is checked twice: statically (it names only the
standard library, numpy, pandas, pyarrow and itself) and by importing it in a fresh interpreter.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fstore", "jobs", "services", "examples")
CORE_THIRD_PARTY = {"numpy", "pandas", "pyarrow"}
ENGINES = ("faust", "pyspark", "redis", "fastapi", "feast", "deltalake", "aiokafka", "confluent_kafka", "duckdb")
# the application layer: commands and local services may import anything; nothing below may import them
TOP = ("fstore.cli", "fstore.commands", "fstore.devsvc")


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for pkg in PACKAGES:
        for p in (ROOT / pkg).rglob("*.py"):
            name = ".".join(p.relative_to(ROOT).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = p
    return out


MODULES = modules()


def owner(name: str) -> str | None:
    """The shipped module an imported name belongs to (``fstore.core.pit.x`` → ``fstore.core.pit``)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def imported(path: Path, module: str) -> Iterator[str]:
    """Every absolute name ``module`` imports (``from a import b`` yields ``a.b``)."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def graph() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for m, p in MODULES.items():
        deps = {o for name in imported(p, m) if (o := owner(name)) is not None}
        deps.discard(m)
        # a package's __init__ is imported with any of its modules: not an edge of its own
        edges[m] = {d for d in deps if not m.startswith(d + ".")}
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def group(module: str) -> str:
    """The unit of layering: a sub-package of fstore (``fstore.online``) or a top-level module of it."""
    return ".".join(module.split(".")[:2])


def test_the_graph_is_read() -> None:
    edges = graph()
    assert len(edges) > 60
    assert "fstore.core.plan" in edges["fstore.core.pit"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_cycles() -> None:
    assert cycles(graph()) == []


def test_packages_form_layers() -> None:
    """Between sub-packages the edges point one way only (the package graph has no cycle)."""
    pkg: dict[str, set[str]] = {}
    for m, deps in graph().items():
        pkg.setdefault(group(m), set()).update(group(d) for d in deps if group(d) != group(m))
    assert cycles(pkg) == []


def test_nothing_below_the_application_imports_it() -> None:
    bad = [(m, d) for m, deps in graph().items() for d in deps if d.startswith(TOP) and not m.startswith(TOP)]
    assert bad == []


def test_adapters_never_import_the_deployables() -> None:
    """fstore is a library for jobs/ and services/; only its command layer starts them."""
    bad = [
        (m, d)
        for m, deps in graph().items()
        for d in deps
        if m.startswith("fstore") and not m.startswith(TOP) and d.startswith(("jobs", "services"))
    ]
    assert bad == []


def test_only_the_commands_import_the_shipped_example() -> None:
    """The example's traffic generator (``examples``) is reached only by the commands that generate its
    traffic (``fstore generate`` / ``fstore publish --live``); the library and the deployables never."""
    bad = [
        (m, d)
        for m, deps in graph().items()
        for d in deps
        if d.startswith("examples") and not m.startswith(("examples", *TOP))
    ]
    assert bad == []


def test_core_names_only_itself_the_standard_library_and_arrow() -> None:
    allowed = set(sys.stdlib_module_names) | CORE_THIRD_PARTY | {"fstore"}
    bad = []
    for m, p in MODULES.items():
        if not m.startswith("fstore.core"):
            continue
        for name in imported(p, m):
            top = name.split(".")[0]
            if top not in allowed or (top == "fstore" and owner(name) and not owner(name).startswith("fstore.core")):  # type: ignore[union-attr]
                bad.append((m, name))
    assert bad == []


def test_importing_the_core_loads_no_engine() -> None:
    code = (
        "import pkgutil, importlib, sys, fstore.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('fstore.core.' + m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {ENGINES!r}]\n"
        "print(len(list(pkgutil.iter_modules(c.__path__))), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, cwd=ROOT)
    assert res.returncode == 0, res.stdout + res.stderr
    assert int(res.stdout.split()[0]) >= 7  # the check really imported the core modules
