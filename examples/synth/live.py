"""Live synthetic traffic: generated messages sent to Kafka when the wall clock reaches their arrival time.

Used by ``fstore publish --live`` and the stream benchmark; the Kafka side is :class:`fstore.kafka.client.Publisher`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from examples.synth.generator import GeneratorConfig, generate
from fstore.kafka.client import Publisher, PublishReport

#: Live traffic is generated from ``margin`` seconds before now to ``margin`` after the end, and only
#: the messages arriving inside the window are sent: sessions are then in a steady state (no ramp-up at
#: the start, no pile-up of clipped session tails at the end). The margin shrinks at high rates so the
#: warm-up never costs more than about this many generated messages.
LIVE_MARGIN_S = 180.0
LIVE_MARGIN_MESSAGES = 300_000


@dataclass(frozen=True)
class LivePlan:
    """Live traffic: generator settings and the window ``[now_us, now_us + duration)`` that is sent."""

    cfg: GeneratorConfig
    now_us: int
    duration: float
    rate: float

    @property
    def expected(self) -> int:
        """Expected number of messages sent (``rate × duration``)."""
        return round(self.rate * self.duration)


def live_plan(rate: float, duration: float, now_us: int, **options: Any) -> LivePlan:
    """Plan ``rate`` events/s of synthetic traffic whose arrivals cover ``[now, now + duration)``.

    Args:
        rate: mean events per second (> 0).
        duration: seconds of traffic (> 0).
        now_us: wall-clock start, UTC epoch microseconds.
        options: other :class:`~examples.synth.generator.GeneratorConfig` fields (users, malformed_rate, …).

    Raises:
        ValueError: for a non-positive rate or duration, or an invalid option.
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("live traffic needs a rate > 0 and a duration > 0")
    margin = min(LIVE_MARGIN_S, max(1.0, LIVE_MARGIN_MESSAGES / rate))
    span = duration + 2 * margin
    cfg = GeneratorConfig(
        start=now_us - round(margin * 1e6),
        end=now_us + round((duration + margin) * 1e6),
        events=max(1, round(rate * span)),
        batch_size=max(1_000, min(100_000, int(rate))),
        **options,
    )
    return LivePlan(cfg, now_us, duration, rate)


def publish_live(
    plan: LivePlan,
    seed: int,
    bootstrap: str,
    topic: str,
    *,
    config: Mapping[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
) -> PublishReport:
    """Generate traffic and send each message of the window when the clock reaches its arrival time.

    The schedule starts when the first message of the window is generated (after the warm-up margin):
    message *i* is sent ``(arrival_i - now_us)`` seconds after that, so an event time is never ahead of
    the wall clock (arrival = event_time + delivery lag) and the rate follows the generator's traffic
    curve. Messages arriving before the window are skipped; sending stops at the end of the window.

    Returns:
        The complete report; ``target_rate`` is the planned mean rate.
    """
    end_us = plan.now_us + round(plan.duration * 1e6)
    origin: float | None = None
    with Publisher(bootstrap, topic, rate=plan.rate, config=config) as pub:
        for batch in generate(plan.cfg, seed, dumps=orjson.dumps):
            arrival = batch.arrival
            lo, hi = (int(x) for x in arrival.searchsorted([plan.now_us, end_us]))
            if lo == hi:
                if hi < len(arrival):
                    break  # past the window
                continue  # still warming up
            if origin is None:
                origin = pub.restart_clock()  # nothing was sent yet: time the run from here
            due = ((arrival[lo:hi] - plan.now_us) / 1e6 + origin).tolist()
            if not pub.send(
                batch.keys[lo:hi], batch.values[lo:hi], due=due, deadline=origin + plan.duration, progress=progress
            ) or hi < len(arrival):
                break
    return pub.report
