"""Settings: one loader for every deployable; errors name the variable."""

import pytest

from fstore.settings import Settings, SettingsError, load_settings

pytestmark = pytest.mark.unit


def test_invalid_value_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FSTORE_TOPIC_PARTITIONS", "zero")
    with pytest.raises(SettingsError, match="FSTORE_TOPIC_PARTITIONS"):
        load_settings(Settings)


def test_relative_data_dir_is_made_absolute_for_jobs() -> None:
    s = load_settings(Settings, data_dir="some/dir")
    assert s.table("raw_events").startswith("/") and s.table("raw_events").endswith("some/dir/raw_events")
    assert load_settings(Settings, data_dir="s3://bucket/x/").table("t") == "s3://bucket/x/t"
