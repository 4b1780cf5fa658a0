"""The bulk consumer's records without a ``ConsumerRecord`` per message.

aiokafka parses a fetch's record batches in C (``DefaultRecord``: ``offset``, ``timestamp``, ``key``,
``value``, ``headers``), then copies each record into a ``ConsumerRecord`` dataclass — a Python ``__init__``
of eleven fields and two tracked objects per message, ~5 % of the worker's samples during a backlog. The
speed layer reads only ``offset``, ``timestamp`` (epoch ms), ``key`` and ``value``, which the parsed record
has with the same values, so its consumer is handed the parsed records themselves.

Only a consumer built with :func:`mark` as its ``value_deserializer`` gets them (aiokafka passes it to every
``PartitionRecords`` it creates); any other consumer in the process — Faust's, the benchmark's reference
worker — still gets ``ConsumerRecord``\\ s. :func:`install` swaps aiokafka's ``PartitionRecords`` for the
subclass below once; an aiokafka without that hook is left alone, and the marker, an identity function, then
still yields the same bytes through the usual ``ConsumerRecord``.
"""

from __future__ import annotations

from typing import Any

import aiokafka.consumer.fetcher as fetcher


def mark(value: bytes | None) -> bytes | None:
    """The bulk consumer's ``value_deserializer``: the value unchanged (and the records left as parsed)."""
    return value


class _ParsedRecords(fetcher.PartitionRecords):  # type: ignore[misc]
    """``PartitionRecords`` that hands out the parsed record itself to a consumer marked with :func:`mark`."""

    def _consumer_record(self, tp: Any, record: Any) -> Any:
        if self._value_deserializer is mark and self._key_deserializer is None:
            return record
        return super()._consumer_record(tp, record)


def install() -> bool:
    """Make aiokafka create :class:`_ParsedRecords` (idempotent); ``False`` when this aiokafka has no such hook."""
    current = getattr(fetcher, "PartitionRecords", None)
    if current is _ParsedRecords:
        return True
    if current is not _ParsedRecords.__mro__[1] or not callable(getattr(current, "_consumer_record", None)):
        return False
    fetcher.PartitionRecords = _ParsedRecords
    return True
