"""A repository's stream source declares its Kafka topic, and the processes read it (:mod:`fstore.topics`) unless
``FSTORE_EVENTS_TOPIC`` names another. When that override differs, events sent to the declared topic are never
read: ``fstore apply`` (and a plain ``feast apply``) and the stream worker must say so, naming both and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from fstore.applying import topic_mismatch
from fstore.settings import Settings
from fstore.topics import events_topic, on_declared_topic
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


def test_a_declared_topic_other_than_the_one_read_is_named_with_the_fix() -> None:
    rides = compiled("rides")
    assert rides.topic == "rides"
    warning = topic_mismatch(rides, "events")
    assert warning is not None
    assert "declares Kafka topic 'rides'" in warning and "FSTORE_EVENTS_TOPIC='events'" in warning, warning
    assert "Unset FSTORE_EVENTS_TOPIC (or set it to 'rides')" in warning, warning
    assert topic_mismatch(rides, "rides") is None
    assert topic_mismatch(dataclasses.replace(rides, topic=""), "events") is None  # nothing declared


def test_the_declared_topic_is_read_unless_fstore_events_topic_names_another(monkeypatch: pytest.MonkeyPatch) -> None:
    rides = compiled("rides")
    monkeypatch.delenv("FSTORE_EVENTS_TOPIC", raising=False)
    unset = Settings(_env_file=None)
    assert events_topic(unset, rides.topic) == "rides"
    assert on_declared_topic(unset, rides.topic).events_topic == "rides" and unset.events_topic == "events"
    assert events_topic(unset, "") == "events"  # nothing declared: the default
    monkeypatch.setenv("FSTORE_EVENTS_TOPIC", "replay")
    chosen = Settings(_env_file=None)
    assert (
        events_topic(chosen, rides.topic) == "replay"
        and on_declared_topic(chosen, rides.topic).events_topic == "replay"
    )
    monkeypatch.setenv("FSTORE_EVENTS_TOPIC", "events")  # set to the default's value: still an override
    assert events_topic(Settings(_env_file=None), rides.topic) == "events"
