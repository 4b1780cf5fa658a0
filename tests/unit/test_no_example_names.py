"""The shipped packages name nothing of the example repository (issue 13, Build 2).

fstore is a general feature store: every view, feature, entity, event type and event field comes from the
user's Feast repository, compiled into the plan. This test reads the names from the compiled example
(``tests/support/repos/ecommerce``, the same definitions as ``feature_repo/``), so the list is not typed by
hand, and looks for each one as a whole word in every ``.py`` file of ``fstore``, ``jobs`` and ``services``
— code, strings, docstrings and comments alike.

Two kinds of names are left out, each for a stated reason:

* the declared id and timestamp fields (``event_id``, ``event_time``): fstore's own vocabulary for the
  identity and time of *any* event (its Delta index and Redis layout use them as column and field names),
  not something the shop declares;
* a name that a module imports (``import click``, the CLI library): a Python module, not the example's
  ``click`` event. Only the code tokens of that name are skipped; prose still counts.

A file exempt would be named in :data:`EXEMPT` with its reason (none is: the ``make demo`` walkthrough
lives with the example, in ``examples/demo/``); an exemption fails once the file no longer needs it.

The entity names ``user`` and ``product`` are ordinary English words (a *user* of fstore, a *product* of
two measures); they are checked only as code or quoted names (``"user"``, ``'product'``, ````user````), not
in running prose.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.repos import compiled

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("fstore", "jobs", "services")
#: Files allowed to name the example, and why (remove the entry when the reason goes away).
#: (None today: the `make demo` walkthrough, which names the example's features, lives in examples/demo/.)
EXEMPT: dict[str, str] = {}


def example_names() -> tuple[set[str], set[str]]:
    """``(names, words)``: every name the example declares, and those that are also plain English words."""
    plan = compiled("ecommerce")
    names: set[str] = set()
    for view in plan.views:
        names.add(view.name)
        names.update(m.name for m in view.measures)
        names.update(f.name for f in view.features)
    for entity in plan.entities:
        names.update((entity.name, entity.join_key))
    for field in plan.schema.fields:
        names.add(field.name)
        names.update(field.values)
    names -= {plan.schema.id_field, plan.schema.timestamp_field}
    words = {e.name for e in plan.entities}
    return names, words


def imported_names(source: str) -> set[str]:
    """Names a module binds by importing (``import click`` → ``click``)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import | ast.ImportFrom):
            out.update((a.asname or a.name).split(".")[0] for a in node.names)
    return out


def hits(path: Path, names: set[str], words: set[str]) -> Iterator[str]:
    """``file:line: name`` of every example name in ``path``."""
    source = path.read_text()
    modules = imported_names(source)
    prose_names = names - words
    any_word = re.compile(r"\b(" + "|".join(sorted(map(re.escape, names), key=len, reverse=True)) + r")\b")
    quoted = re.compile(r"""(?:["'`])(""" + "|".join(map(re.escape, sorted(words))) + r""")(?:["'`])""")
    rel = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        line = tok.start[0]
        if tok.type == tokenize.NAME:
            if tok.string in names and tok.string not in modules:
                yield f"{rel}:{line}: {tok.string}"
        elif tok.type in (tokenize.STRING, tokenize.COMMENT) or tok.type == getattr(tokenize, "FSTRING_MIDDLE", -1):
            text = tok.string
            found = {m.group(1) for m in any_word.finditer(text) if m.group(1) in prose_names}
            found |= {m.group(1) for m in quoted.finditer(text)}
            for name in sorted(found):
                yield f"{rel}:{line}: {name}"


def test_names_come_from_the_compiled_example() -> None:
    names, words = example_names()
    # a sanity floor, so a compiler change that empties the plan cannot make this test pass vacuously
    assert {"user_activity", "product_engagement", "user_id", "click", "price", "ctr_1h"} <= names
    assert words == {"user", "product"}


def files() -> list[Path]:
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py") if str(p.relative_to(ROOT)) not in EXEMPT)


def test_the_packages_name_nothing_of_the_example() -> None:
    names, words = example_names()
    found = [h for p in files() for h in hits(p, names, words)]
    assert not found, "the example's names in the shipped packages:\n" + "\n".join(found)


def test_every_exemption_is_still_needed() -> None:
    names, words = example_names()
    for rel in sorted(EXEMPT):
        assert list(hits(ROOT / rel, names, words)), f"{rel} names nothing of the example any more: drop it from EXEMPT"


def test_the_scan_finds_a_name_in_code_strings_and_comments(tmp_path: Path) -> None:
    """The scan is not blind: the example's names are found as code, in strings and in comments; a module
    named like one (``import click``) and the entity names in prose are not."""
    names, words = example_names()
    src = tmp_path / "m.py"
    src.write_text(
        "import click\n"
        "user_activity = 1\n"
        "x = click.echo('the price')\n"
        "# counts page_view events\n"
        "y = {'user': 1}  # a user of fstore, a product of two measures\n"
    )
    found = [h.rpartition(": ")[2] for h in hits(src, names, words)]
    assert found == ["user_activity", "price", "page_view", "user"]
