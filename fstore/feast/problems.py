"""Collecting definition mistakes: every one is reported at once, each naming its object (a compile is
all-or-nothing, so a user fixes a repository in one round, not one error per run)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from fstore.core.plan_error import PlanError

#: Prefix of the Feast tags that carry fstore declarations.
PREFIX = "fstore."


class Problems:
    """An ordered list of ``"<object>: <what is wrong and what to do>"`` messages."""

    def __init__(self) -> None:
        self.items: list[str] = []

    def add(self, where: str, message: str) -> None:
        """Record one mistake of the object ``where`` (e.g. ``KafkaSource 'events'``)."""
        self.items.append(f"{where}: {message}")

    def raise_any(self) -> None:
        """Raise :class:`PlanError` with every mistake recorded so far, if any."""
        if self.items:
            raise PlanError(self.items)


def fstore_tags(
    tags: Mapping[str, str], known: tuple[str, ...], where: str, problems: Problems
) -> Iterator[tuple[str, str, str]]:
    """The ``fstore.*`` tags of an object as ``(kind, subject, value)``: ``fstore.min.amount = "0"`` is
    ``("min", "amount", "0")``; a tag without a subject has ``subject == ""``. Unknown kinds and missing
    or extra subjects are problems (a typo in a tag must not silently drop a declaration).

    Args:
        known: the accepted kinds; a kind ending in ``.`` takes a subject (``"min."``), others do not.
    """
    for key in sorted(tags):
        if not key.startswith(PREFIX):
            continue
        rest = key[len(PREFIX) :]
        kind, dot, subject = rest.partition(".")
        if kind + dot not in known or (dot and not subject):
            forms = ", ".join(PREFIX + k + ("<name>" if k.endswith(".") else "") for k in known)
            problems.add(where, f"unknown tag '{key}' (known: {forms})")
            continue
        yield kind, subject, tags[key]
