"""The core must not load any engine or service client (STYLE.md §1)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.unit

FORBIDDEN = ("faust", "pyspark", "redis", "fastapi", "feast", "deltalake", "aiokafka", "confluent_kafka")


def test_importing_the_core_loads_no_engine() -> None:
    code = (
        "import pkgutil, importlib, sys, fstore.core as c\n"
        "for m in pkgutil.iter_modules(c.__path__): importlib.import_module('fstore.core.' + m.name)\n"
        f"bad = [m for m in sys.modules if m.split('.')[0] in {FORBIDDEN!r}]\n"
        "print(len(list(pkgutil.iter_modules(c.__path__))), bad)\n"
        "sys.exit(1 if bad else 0)\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stdout + res.stderr
    n_modules = int(res.stdout.split()[0])
    assert n_modules >= 7  # the check really imported the core modules
