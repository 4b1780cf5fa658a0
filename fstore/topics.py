"""The Kafka topic of the events: the one the repository's stream source declares, unless the operator names
another (docs/features.md, "Topic").

A repository says once where its events arrive (the Feast ``KafkaSource``'s ``topic``); the stream worker,
``fstore publish`` and ``fstore services up`` use it. ``FSTORE_EVENTS_TOPIC``, when set, overrides it (a
staging topic, a replay), and then ``fstore plan``/``apply`` and the worker's start warn that the declared
topic is not read (:func:`fstore.applying.topic_mismatch`). A source that declares no topic: ``events``.
Dead letters go to ``FSTORE_DLQ_TOPIC`` (default ``events.dlq``) whatever the events topic.
"""

from __future__ import annotations

from typing import TypeVar

from fstore.settings import Settings

S = TypeVar("S", bound=Settings)


def events_topic(settings: Settings, declared: str) -> str:
    """``FSTORE_EVENTS_TOPIC`` when set, else ``declared`` (the stream source's topic,
    :func:`fstore.plan_source.declared_topic`), else the default ``events``."""
    if "events_topic" in settings.model_fields_set:
        return settings.events_topic
    return declared or settings.events_topic


def on_declared_topic(settings: S, declared: str) -> S:
    """``settings`` with :func:`events_topic` as its ``events_topic``."""
    topic = events_topic(settings, declared)
    return settings if topic == settings.events_topic else settings.model_copy(update={"events_topic": topic})
