"""Generated Kafka message values with every injection the generator makes, for the decoder tests."""

from __future__ import annotations

import orjson

from examples.synth.generator import GeneratorConfig, generate
from fstore.core.timeutil import HOUR


def injected_messages(end: int, hours: int, events: int, seed: int, malformed_rate: float) -> list[bytes]:
    """``events`` messages over the ``hours`` before ``end``, for ``users=50, products=20``: duplicates (5 %),
    late events (10 %), personal data (10 %), epoch-millisecond times (30 %) and ``malformed_rate`` of
    invalid messages of every reason."""
    cfg = GeneratorConfig(
        start=end - hours * HOUR,
        end=end,
        events=events,
        users=50,
        products=20,
        duplicate_rate=0.05,
        malformed_rate=malformed_rate,
        late_rate=0.1,
        pii_rate=0.1,
        epoch_ms_rate=0.3,
    )
    return [v for b in generate(cfg, seed, dumps=orjson.dumps) for v in b.values]


def event_message(eid: str, user: str, product: str, t: int, kind: str = "purchase", price: float = 10.0) -> bytes:
    """One example-schema message (quantity 2) stamped ``t`` (UTC epoch µs, sent in milliseconds)."""
    return orjson.dumps(
        {
            "event_id": eid,
            "event_type": kind,
            "user_id": user,
            "product_id": product,
            "event_time": t // 1000,
            "price": price,
            "quantity": 2,
        }
    )
