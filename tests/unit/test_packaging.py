"""The declared dependencies match the imports of the shipped packages (fstore, jobs, services).

Every third-party module the shipped code imports (also lazily, inside a function) must come from a
distribution listed in ``[project.dependencies]`` — a dev extra is not installed for users — and every
listed distribution must be imported somewhere, so nothing is installed for nothing.
"""

from __future__ import annotations

import ast
import re
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
FIRST_PARTY = {"fstore", "jobs", "services", "examples"}
# imported by name in a subprocess or loaded by another package, not by an import statement
USED_WITHOUT_IMPORT: dict[str, str] = {}


def normalise(dist: str) -> str:
    return re.sub(r"[-_.]+", "-", dist).lower()


def declared(group: str | None = None) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return {normalise(re.split(r"[<>=!~\[ ;]", r, maxsplit=1)[0]) for r in reqs}


def imported_modules() -> set[str]:
    names: set[str] = set()
    for pkg in FIRST_PARTY:
        for path in (ROOT / pkg).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names |= {a.name.split(".")[0] for a in node.names}
                elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                    names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in FIRST_PARTY}


def imported_distributions() -> dict[str, str]:
    """module → the distribution that provides it (from the installed environment)."""
    owners = packages_distributions()
    out = {}
    for mod in imported_modules():
        dists = owners.get(mod)
        assert dists, f"{mod} is imported by the shipped code but no installed distribution provides it"
        out[mod] = normalise(dists[0])
    return out


def test_every_imported_distribution_is_a_runtime_dependency() -> None:
    missing = {m: d for m, d in imported_distributions().items() if d not in declared()}
    assert missing == {}, "add these to [project.dependencies] (not only to an extra)"


def test_every_runtime_dependency_is_imported() -> None:
    used = set(imported_distributions().values()) | set(USED_WITHOUT_IMPORT)
    assert declared() - used == set(), "remove these from [project.dependencies] or import them"


def test_the_check_reads_real_imports() -> None:
    dists = imported_distributions()
    assert dists["pyspark"] == "pyspark" and dists["faust"] == "faust-streaming"
    assert "pytest" in declared("dev") and "pytest" not in declared()
