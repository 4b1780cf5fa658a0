"""Feast repositories for the compiler's tests: ``ecommerce`` (today's example views in Feast's objects)
and ``rides`` (a second repository sharing nothing with it)."""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path

from fstore.core.plan import Plan

ROOT = Path(__file__).resolve().parent


@cache
def compiled(name: str) -> Plan:
    """The plan of repository ``name`` (compiled once per test session)."""
    from fstore.feast.compile import compile_repo  # imports Feast: only for the tests that need it

    return compile_repo(ROOT / name)


def installed(name: str) -> Iterator[Plan]:
    """Install repository ``name``'s plan as the process's plan while the generator is suspended (a fixture
    body: ``yield from installed("ecommerce")``)."""
    from fstore.plan_source import use_plan

    plan = compiled(name)
    use_plan(plan)
    try:
        yield plan
    finally:
        use_plan(None)
