"""Feast repositories for the compiler's tests: ``ecommerce`` (today's example views in Feast's objects)
and ``rides`` (a second repository sharing nothing with it)."""

from __future__ import annotations

from functools import cache
from pathlib import Path

from fstore.core.plan import Plan

ROOT = Path(__file__).resolve().parent


@cache
def compiled(name: str) -> Plan:
    """The plan of repository ``name`` (compiled once per test session)."""
    from fstore.feast.compile import compile_repo  # imports Feast: only for the tests that need it

    return compile_repo(ROOT / name)
