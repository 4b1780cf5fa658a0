"""The stream workers' registration (fstore/redis/workers.py): what a worker writes reads back; an old
worker's registration (a time alone) runs an unknown plan; a bad one is never live."""

from __future__ import annotations

import pytest

from fstore.redis.workers import UNKNOWN, parse_registration, registration

pytestmark = pytest.mark.unit


def test_a_registration_reads_back() -> None:
    assert parse_registration(registration("0123456789abcdef", 1_790_000_000.25)) == (
        1_790_000_000.25,
        "0123456789abcdef",
    )
    assert parse_registration(registration("abc", 5.0).encode()) == (5.0, "abc")


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ("1790000000.5", (1_790_000_000.5, UNKNOWN)),
        (b"oops abc", (0.0, UNKNOWN)),
        (None, (0.0, UNKNOWN)),
        ("", (0.0, UNKNOWN)),
    ],
)
def test_old_and_bad_registrations(value: bytes | str | None, want: tuple[float, str]) -> None:
    assert parse_registration(value) == want
