"""A repository's stream source declares its Kafka topic; the processes read ``FSTORE_EVENTS_TOPIC``. When the two
differ, events sent to the declared topic are never read: ``fstore apply`` (and a plain ``feast apply``) and the
stream worker must say so, naming both and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from fstore.applying import topic_mismatch
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


def test_a_declared_topic_other_than_the_one_read_is_named_with_the_fix() -> None:
    rides = compiled("rides")
    assert rides.topic == "rides"
    warning = topic_mismatch(rides, "events")
    assert warning is not None
    assert "declares Kafka topic 'rides'" in warning and "FSTORE_EVENTS_TOPIC='events'" in warning, warning
    assert "Set FSTORE_EVENTS_TOPIC=rides" in warning, warning
    assert topic_mismatch(rides, "rides") is None
    assert topic_mismatch(dataclasses.replace(rides, topic=""), "events") is None  # nothing declared
