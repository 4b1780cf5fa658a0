"""A user's mistake gets one clear line and an exit code, never a Python traceback (probe-docs).

Each case was a traceback (or, for ``fstore serve``, a silent hang) before: a message file name of an
unknown kind, an API that does not answer, a port out of range, an invalid ``FSTORE_*`` variable, a
Redis that does not answer.
"""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from fstore.cli import main
from services.online_api.settings import get_api_settings

pytestmark = pytest.mark.unit

CLOSED = "127.0.0.1:1"  # nothing listens on port 1: a connection is refused at once


def invoke(args: list[str], **env: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, args, env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def test_generate_refuses_an_unknown_file_kind_before_generating(tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out = invoke(["generate", "--out", str(tmp_path / "events.csv"), "--events", "10"])
    assert code == 2
    assert "--out" in out and "use .jsonl or .parquet" in out
    assert not (tmp_path / "events.csv").exists()


def test_check_consistency_names_the_api_it_cannot_reach(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fstore import consistency

    monkeypatch.setattr(consistency, "sample_entities", lambda *a, **k: ["u1"])  # no raw_events needed
    url = f"http://{CLOSED}"
    code, out = invoke(["check-consistency", "--api-url", url, "--sample", "1", "--view", "user_activity"])
    assert code == 1
    assert f"cannot read GET /features from {url}" in out and "--api-url" in out


@pytest.mark.timeout(60)  # before the fix uvicorn waited forever on the impossible port
@pytest.mark.parametrize("args", [["--port", "99999"], ["--workers", "0"]])
def test_serve_refuses_out_of_range_options(args: list[str]) -> None:
    code, out = invoke(["serve", *args])
    assert code == 2
    assert f"Invalid value for '{args[0]}'" in out


@pytest.mark.timeout(60)
def test_an_invalid_setting_is_named_not_a_traceback() -> None:
    get_api_settings.cache_clear()
    try:
        code, out = invoke(["serve"], FSTORE_API_PORT="99999")
    finally:
        get_api_settings.cache_clear()
    assert code == 1
    assert "invalid settings: FSTORE_API_PORT" in out


@pytest.mark.parametrize("args", [["repair", "--no-progress"], ["backfill", "--view", "user_activity", "--skip-batch"]])
def test_redis_unreachable_is_one_line(args: list[str], tmp_path) -> None:  # type: ignore[no-untyped-def]
    code, out = invoke(
        [*args, "--no-progress"] if args[0] == "backfill" else args,
        FSTORE_REDIS_URL=f"redis://{CLOSED}/0",
        FSTORE_DATA_DIR=str(tmp_path),
    )
    assert code == 1
    assert "Redis unreachable" in out and "FSTORE_REDIS_URL" in out
