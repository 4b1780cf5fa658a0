"""Vectorised JSON encoding of generated event columns (Arrow string kernels, no per-event Python).

Every string the generator puts into a valid event comes from a safe alphabet (ids, ISO timestamps,
digits), so messages can be assembled by joining column pieces without JSON escaping. Optional fields
are pieces that are null on rows without the field. Field order: event_id, event_type, user_id,
product_id, session_id, event_time, price, quantity, then the personal-data fields of PII rows.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numpy.typing import NDArray

from examples.synth.config import EVENT_TYPES
from examples.synth.traffic import DAY_MS, Frame

_NUM_WIDTH = 10  # event and session numbers: two 5-digit halves
_HALF = 100_000


def _lit(text: str) -> pa.Scalar:
    return pa.scalar(text, pa.string())


def _join(*parts: pa.Array | pa.Scalar, skip_nulls: bool = False) -> pa.Array:
    """Concatenate pieces row-wise; a null piece nulls the row unless ``skip_nulls`` (then it is empty)."""
    if skip_nulls:
        return pc.binary_join_element_wise(*parts, _lit(""), null_handling="replace", null_replacement="")
    return pc.binary_join_element_wise(*parts, _lit(""))


def _masked(values: NDArray[np.int64], absent: NDArray[np.bool_]) -> pa.Array:
    return pa.array(values, type=pa.int64(), mask=absent)


class Encoder:
    """Encodes :class:`~examples.synth.traffic.Frame` rows as compact JSON messages.

    Args:
        user_ids: the user id strings, indexed by user number.
        product_ids: the product id strings, indexed by product number.
        run: a short tag (``[0-9a-f]``) that prefixes event and session numbers so runs with different
            parameters never share an event_id.
    """

    def __init__(self, user_ids: pa.Array, product_ids: pa.Array, run: str) -> None:
        self.user_ids = user_ids
        self.product_ids = product_ids
        self.run = run
        self._types = pa.array(EVENT_TYPES, pa.string())
        self._pad5 = pc.utf8_lpad(pc.cast(pa.array(np.arange(_HALF)), pa.string()), width=5, padding="0")
        self._cents = pa.array([f"{c:02d}" for c in range(100)], pa.string())
        self._octet = pa.array([str(i) for i in range(256)], pa.string())
        self._hm = pa.array([f"{m // 60:02d}:{m % 60:02d}:" for m in range(1440)], pa.string())
        self._sms = pa.array([f'{ms // 1000:02d}.{ms % 1000:03d}Z"' for ms in range(60_000)], pa.string())

    def number(self, prefix: str, num: NDArray[np.int64]) -> pa.Array:
        """``prefix + run + '-' + num`` zero-padded to 10 digits (``num`` < 10**10)."""
        hi = self._pad5.take(pa.array(num // _HALF))
        lo = self._pad5.take(pa.array(num % _HALF))
        return _join(_lit(f"{prefix}{self.run}-"), hi, lo)

    def _iso(self, time_ms: NDArray[np.int64]) -> pa.Array:
        """``"YYYY-MM-DDTHH:MM:SS.mmmZ"`` (quoted) for UTC epoch milliseconds."""
        days, in_day = np.divmod(time_ms, DAY_MS)
        uniq, inv = np.unique(days, return_inverse=True)
        epoch = datetime(1970, 1, 1, tzinfo=UTC)
        dates = pa.array([f'"{(epoch + timedelta(days=int(d))).date().isoformat()}T' for d in uniq], pa.string())
        minute, in_minute = np.divmod(in_day, 60_000)
        return _join(
            dates.take(pa.array(inv.reshape(-1))), self._hm.take(pa.array(minute)), self._sms.take(pa.array(in_minute))
        )

    def encode(self, fr: Frame) -> pa.Array:
        """One compact JSON object per row, as an Arrow binary array."""
        if len(fr) == 0:
            return pa.array([], pa.binary())
        event_time = pc.if_else(
            pa.array(fr.epoch_ms), pc.cast(pa.array(fr.time_ms), pa.string()), self._iso(fr.time_ms)
        )
        has_price = fr.price >= 0
        cents = np.where(has_price, fr.price, 0)
        price = _join(
            _lit(',"price":'),
            pc.cast(_masked(cents // 100, ~has_price), pa.string()),
            _lit("."),
            self._cents.take(pa.array(cents % 100)),
        )
        quantity = _join(_lit(',"quantity":'), pc.cast(_masked(fr.quantity, fr.quantity <= 0), pa.string()))
        product = _join(_lit(',"product_id":"'), self.product_ids.take(_masked(fr.product, fr.product < 0)), _lit('"'))
        return _join(
            _lit('{"event_id":"'),
            self.number("e", fr.num),
            _lit('","event_type":"'),
            self._types.take(pa.array(fr.etype)),
            _lit('","user_id":"'),
            self.user_ids.take(pa.array(fr.user)),
            _lit('"'),
            product,
            _lit(',"session_id":"'),
            self.number("s", fr.session),
            _lit('","event_time":'),
            event_time,
            price,
            quantity,
            self._pii(fr),
            _lit("}"),
            skip_nulls=True,
        ).cast(pa.binary())

    def _pii(self, fr: Frame) -> pa.Array:
        """Personal data on PII rows (an e-mail, a phone number and an IP address derived from the user)."""
        user = _masked(fr.user, ~fr.pii)
        phone = (fr.user * 7919 + 1_234_567) % 10_000_000
        octets = [self._octet.take(_masked((fr.user >> s) & 255, ~fr.pii)) for s in (16, 8, 0)]
        return _join(
            _lit(',"email":"'),
            self.user_ids.take(user),
            _lit('@example.com","phone":"+1-555-'),
            self._pad5.take(_masked(phone // 100, ~fr.pii)),
            self._cents.take(pa.array(phone % 100)),
            _lit('","ip":"10.'),
            octets[0],
            _lit("."),
            octets[1],
            _lit("."),
            octets[2],
            _lit('"'),
        )
