"""Request handling (resolve, read, shape) over the in-memory reader: values keyed ``view:feature``, the
lambda merge across the cutover equal to the brute force, and client errors named."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest

from fstore.core.aggregates import isclose
from fstore.core.view_tiles import ViewTiler
from fstore.online.fakes import MemoryReader
from fstore.plan_source import current_plan
from fstore.redis.layout import BatchPointer
from services.online_api.logic import RequestError, read_features
from tests.support import plan_bruteforce
from tests.support.online import AS_OF, C, make_events

pytestmark = pytest.mark.unit


def test_read_features_merges_batch_before_c_and_speed_after() -> None:
    plan = current_plan()  # the shipped example
    events = [e._asdict() for e in make_events(3)]
    before, after = [e for e in events if e["event_time"] < C], [e for e in events if e["event_time"] >= C]
    reader = MemoryReader(
        speed={v.name: ViewTiler(v, "event_time").build(after) for v in plan.views},
        batch={v.name: ViewTiler(v, "event_time").build(before) for v in plan.views},
        pointer=BatchPointer("v1", C),
        clock=lambda: AS_OF,
    )
    rows = [{"user_id": f"u{i}", "product_id": f"p{i}"} for i in range(8)]
    body = asyncio.run(read_features(reader, rows, ["user_activity", "product_engagement:ctr_24h"], 100))
    assert body["batch_cutoff"] == "2026-11-21T00:00:00Z" and body["as_of_us"] == AS_OF
    for row, out in zip(rows, body["rows"], strict=True):
        want = plan_bruteforce.values(plan, "user_activity", events, row["user_id"], AS_OF)
        want_p = plan_bruteforce.values(plan, "product_engagement", events, row["product_id"], AS_OF)
        got = out["values"]
        assert all(isclose(got[f"user_activity:{k}"], v) for k, v in want.items()), (row, got, want)
        assert isclose(got["product_engagement:ctr_24h"], want_p["ctr_24h"])


@pytest.mark.parametrize(
    ("rows", "features", "status", "needle"),
    [
        ([{"user_id": "u1"}], ["nope"], 404, "nope"),
        ([{"user_id": "u1"}], ["user_activity:nope"], 404, "nope"),
        ([{"user_id": "u1"}], ["user_activity:"], 404, "has no feature ''"),  # not the whole view
        ([{"shop_id": "s1"}], ["user_activity"], 422, "shop_id"),
        ([{"user_id": "u1"}], ["product_engagement"], 422, "product_id"),
        ([{"user_id": "bad id!"}], ["user_activity"], 422, "user_id"),
        ([], ["user_activity"], 422, "no entities"),
        ([{"user_id": "u1"}] * 3, ["user_activity"], 413, "limit is 2"),
    ],
)
def test_client_errors_name_the_problem(
    rows: list[dict[str, str]], features: list[str], status: int, needle: str
) -> None:
    reader = MemoryReader(speed={}, clock=lambda: AS_OF)
    with pytest.raises(RequestError) as err:
        asyncio.run(read_features(reader, rows, features, 2))
    assert err.value.status == status and needle in str(err.value)


def test_historical_features_without_rows_is_empty_and_still_checks_the_features(tmp_path: object) -> None:
    """No entity rows: no values (200, ``rows: []``), not a 422 about a missing column; an unknown feature
    is still named."""
    from services.online_api.logic import historical_features

    assert historical_features([], ["user_activity"], False, str(tmp_path), 10) == []
    with pytest.raises(RequestError) as err:
        historical_features([], ["user_activity:nope"], False, str(tmp_path), 10)
    assert err.value.status == 422 and "nope" in str(err.value)


def test_historical_features_return_the_input_columns_unchanged(tmp_path: object) -> None:
    """docs/design.md §6: every input column kept. A column missing or null in some rows is not made float:
    2**53 + 1 stays itself (a float would change it), 1 stays an integer; and a timestamp given as a number
    is epoch milliseconds as in an event (design §2), not a reading in nanoseconds; out of that range, a 422
    naming the column."""
    from services.online_api.logic import historical_features

    t = "2026-11-21T10:00:00Z"
    rows: list[dict[str, object]] = [
        {"user_id": "u1", "event_timestamp": t, "id": 2**53 + 1, "label": 1, "ok": True, "tag": "a"},
        {"user_id": "u2", "event_timestamp": t, "label": None, "ok": None},
    ]
    out = historical_features(rows, ["user_activity:clicks_1h"], False, str(tmp_path), 10)
    for given, got in zip(rows, out, strict=True):
        for k, v in given.items():
            if k != "event_timestamp":
                assert got[k] == v and type(got[k]) is type(v), (k, v, got[k])
    assert out[1]["id"] is None and out[1]["tag"] is None and [o["clicks_1h"] for o in out] == [0, 0]
    ms = 1795169220000
    as_ms = historical_features(
        [{"user_id": "u1", "event_timestamp": ms}, {"user_id": "u1", "event_timestamp": ms + 0.25}],
        ["user_activity:clicks_1h"],
        False,
        str(tmp_path),
        10,
    )
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    want = [(epoch + timedelta(milliseconds=ms, microseconds=us)).isoformat() for us in (0, 250)]
    assert [r["event_timestamp"] for r in as_ms] == want
    late = [{"user_id": "u1", "event_timestamp": 253402214399000}]
    last = historical_features(late, ["user_activity:clicks_1h"], False, "", 10)
    assert last[0]["event_timestamp"] == datetime(9999, 12, 30, 23, 59, 59, tzinfo=UTC).isoformat()  # §2's bound
    with pytest.raises(RequestError, match="null"):  # a row without the key: named as a null, not a number
        historical_features([late[0], {"user_id": "u2"}], ["user_activity"], False, "", 10)
    for keys in ([5, "u2"], [2**64]):  # join keys Arrow cannot hold in one column: a 422 naming it, not a 500
        with pytest.raises(RequestError) as err:
            historical_features([{"user_id": k, "event_timestamp": ms} for k in keys], ["user_activity"], False, "", 10)
        assert err.value.status == 422 and "user_id" in str(err.value)
    for bad in (1795169220, True):  # epoch seconds (1970 in ms), a boolean
        with pytest.raises(RequestError) as err:
            historical_features([{"user_id": "u1", "event_timestamp": bad}], ["user_activity"], False, "", 10)
        assert err.value.status == 422 and "event_timestamp" in str(err.value)
