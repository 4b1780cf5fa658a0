"""What the stream worker knows about the log it consumes: which incarnation of the topic, how many partitions.

A Kafka log can lose its past: a topic deleted and created again, a broker restarted on an empty log
directory. The worker's offsets then point into a log that no longer exists — beyond the new end, or,
worse, inside a new log that has grown past them. Its policy (docs/stream.md, *Log reset*; docs/runbook.md)
is to **resume from the earliest offset** of the new log, loudly, and let the per-event_id markers absorb
the replay. It detects a reset three ways:

* the broker answers ``OFFSET_OUT_OF_RANGE`` for its position (the consumer runs with
  ``auto_offset_reset="none"``, so aiokafka reports it instead of silently resetting);
* a partition it has consumed before comes back with no committed offset (the group's offsets went with
  the topic);
* the topic's id changed (:class:`TopicWatch`, a metadata request every ``FSTORE_STREAM_TOPIC_CHECK_S``):
  the only sign when a re-created topic already holds more messages than the old one did.

:class:`TopicWatch` also reports a changed partition count (the consumer's metadata refresh, at the same
period, then assigns the new partitions).
"""

from __future__ import annotations

from typing import Any, NamedTuple


class TopicState(NamedTuple):
    """One metadata answer: the topic's id (``None``: the topic does not exist) and its partition count."""

    topic_id: str | None
    partitions: int


class TopicWatch:
    """Describes one topic with a Kafka admin client (blocking: call it in a thread).

    Args:
        bootstrap: ``host:port`` list.
        topic: the topic to watch.
    """

    def __init__(self, bootstrap: list[str], topic: str) -> None:
        from confluent_kafka.admin import AdminClient

        self.topic = topic
        self._admin = AdminClient({"bootstrap.servers": ",".join(bootstrap), "log_level": 0})

    def describe(self, timeout: float = 5.0) -> TopicState | None:
        """The topic's state now; ``None`` when the broker did not answer (an outage: nothing is concluded)."""
        from confluent_kafka import KafkaError, KafkaException, TopicCollection

        future = self._admin.describe_topics(TopicCollection([self.topic]), request_timeout=timeout)[self.topic]
        try:
            desc: Any = future.result(timeout=timeout + 1)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                return TopicState(None, 0)
            return None
        except Exception:
            return None
        return TopicState(str(desc.topic_id), len(desc.partitions))


class Change(NamedTuple):
    """What changed between two answers of :class:`TopicWatch`."""

    recreated: bool  # the topic has another id than the last one seen
    partitions: tuple[int, int] | None  # (before, now) when the partition count changed


def compare(known: TopicState | None, now: TopicState | None) -> tuple[TopicState | None, Change]:
    """The new known state and what changed. A missing topic or no answer changes nothing yet: the topic is
    judged when it exists again (its id then tells whether it is the same one)."""
    if now is None or now.topic_id is None:
        return known, Change(False, None)
    if known is None or known.topic_id is None:
        return now, Change(False, None)
    recreated = now.topic_id != known.topic_id
    parts = (known.partitions, now.partitions) if now.partitions != known.partitions else None
    return now, Change(recreated, parts)
