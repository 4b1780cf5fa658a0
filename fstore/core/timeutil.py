"""UTC epoch-microsecond time arithmetic.

All times inside fstore are integers: microseconds since 1970-01-01T00:00:00Z. Integers make window and
tile boundaries exact (no float rounding) and are what Parquet/Delta store for ``timestamp[us, UTC]``.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

MICROS = 1
MILLISECOND = 1_000
SECOND = 1_000_000
MINUTE = 60 * SECOND
HOUR = 60 * MINUTE
DAY = 24 * HOUR

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_US = timedelta(microseconds=1)
#: Epoch microseconds: one instant, or an int64 array of them (the vectorised engines use the same grid
#: arithmetic; numpy's ``%`` on integers is floored like Python's, so both align alike, also before 1970).
Micros = TypeVar("Micros", int, "NDArray[np.int64]")
#: Latest representable event time (9999-12-31T23:59:59.999999Z).
MAX_MICROS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - EPOCH) // _ONE_US


def to_micros(dt: datetime) -> int:
    """Convert an aware datetime to UTC epoch microseconds.

    Raises:
        ValueError: if ``dt`` is naive (fstore never guesses a time zone).
    """
    if dt.tzinfo is None or dt.utcoffset() is None:
        raise ValueError(f"naive datetime {dt.isoformat()} has no UTC offset")
    return (dt - EPOCH) // _ONE_US


def from_micros(us: int) -> datetime:
    """UTC epoch microseconds to an aware UTC datetime."""
    return EPOCH + timedelta(microseconds=us)


def iso(us: int) -> str:
    """UTC epoch microseconds as ISO-8601 with a ``Z`` suffix (the form fstore prints everywhere)."""
    return from_micros(us).isoformat().replace("+00:00", "Z")


def floor_to(us: Micros, step: int) -> Micros:
    """Align ``us`` down to the grid of ``step`` microseconds anchored at the UTC epoch."""
    return us - us % step


def ceil_to(us: Micros, step: int) -> Micros:
    """Align ``us`` up to the grid of ``step`` microseconds (``us`` itself when it is on the grid)."""
    return us + -us % step


def day_start(d: date) -> int:
    """00:00 UTC of calendar day ``d`` in epoch microseconds."""
    return to_micros(datetime(d.year, d.month, d.day, tzinfo=UTC))


def to_date(us: int) -> date:
    """The UTC calendar day containing ``us``."""
    return from_micros(us).date()


#: The shape of an ISO-8601 date and time with a UTC offset: a calendar (or week) date, ``T`` (or RFC
#: 3339's space), hours with optional minutes, seconds and fraction, extended or basic form, then ``Z`` or
#: ``±hh[[:]mm]``; ``t`` and ``z`` may be lower case (RFC 3339, section 5.6). ``datetime.fromisoformat``
#: alone is more lenient (any separator character, ``12:00:00.Z``, offsets with seconds), so its input is
#: checked against this first.
ISO_8601 = re.compile(
    r"(?:\d{4}(-?)\d\d\1\d\d|\d{4}-?W\d\d-?\d)[Tt ]\d\d(?:(:?)\d\d(?:\2\d\d(?:[.,]\d+)?)?)?(?:[Zz]|[+-]\d\d(?::?\d\d)?)"
)


def parse_timestamp(value: str) -> int:
    """Parse an ISO-8601 timestamp *with* an offset (``Z`` or ``±hh:mm``) to UTC epoch microseconds.

    Raises:
        ValueError: if the text is not ISO-8601 (:data:`ISO_8601`) or carries no offset.
    """
    if not ISO_8601.fullmatch(value):
        raise ValueError(f"not an ISO-8601 time with a UTC offset: {value[:40]!r}")
    return to_micros(datetime.fromisoformat(value.upper()))  # fromisoformat takes no lower-case "z"
