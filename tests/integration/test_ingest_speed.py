"""``fstore ingest`` feeds the speed layer as the stream worker would (docs/design.md §2, §5).

The first copy in arrival order wins everywhere, whichever way it came. History loaded with ``fstore
ingest`` is counted in the speed tiles at once (what is inside the stream's horizon), exactly as if it had
been sent through Kafka; when copies of some of its events come later through Kafka with another payload
(re-stamped, another quantity), the stream worker must not count them — the batch layer and point-in-time
reads keep the ingested copies; the very same bytes again are the same event and count once. A real
``fstore ingest`` process writes into the real Redis of a real worker on a real broker; the speed tiles are
compared with the brute force over the first copies, after the ingest and after the stream.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
from deltalake import DeltaTable
from fastapi.testclient import TestClient

from fstore import applied, plan_source
from fstore.core.events import Row, payload_hash
from fstore.core.plan_json import fingerprint
from fstore.core.timeutil import MINUTE, SECOND
from fstore.devsvc.services import Broker, RedisServer, free_port
from fstore.ingest import Ingestor, IngestReport
from fstore.plan_source import current_plan
from fstore.redis.hold import HOLD_KEY
from fstore.redis.workers import LIVE_S, WORKERS_KEY, as_text, parse_registration, wait_following, worker_plans
from jobs.backfill import BackfillReport
from jobs.backfill import backfill as run_backfill
from jobs.batch.settings import BatchSettings
from jobs.ingest_speed import IngestSpeed, SpeedFailed
from jobs.stream.settings import StreamSettings
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support.legacy.events_example import Event, parse
from tests.support.paths import FSTORE, message, run_fstore
from tests.support.repos import compiled
from tests.support.stream import Factory, Traffic, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


def test_ingested_events_count_online_once_and_a_later_copy_through_kafka_does_not(
    tmp_path: Path,
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
) -> None:
    history = make_traffic(600, seed=61, users=40, products=12, hours=1)
    worker = worker_factory(kafka_broker)
    path = tmp_path / "history.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in history.values))
    env = {"FSTORE_DATA_DIR": worker.env["FSTORE_DATA_DIR"], "FSTORE_REDIS_URL": redis_server.url}
    report = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    written = len(history.valid_ids)
    assert report["written"] == report["claimed"] == report["tiled"] == written, report
    assert_tiles_exact(redis_client, history)  # served online at once, each event once
    again = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    assert again["written"] == again["tiled"] == 0, again

    now = time.time_ns() // 1000
    firsts = history.first_copies
    users = sorted({ev.user_id for ev in firsts})
    changed = [  # another payload: re-stamped within the hour, another quantity and, for half, another user
        message(
            ev._replace(
                event_time=min(ev.event_time + MINUTE, now - SECOND),
                quantity=ev.quantity % 4 + 1,
                user_id=users[(users.index(ev.user_id) + 1) % len(users)] if i % 2 else ev.user_id,
            )
        )
        for i, ev in enumerate(firsts[::3])
    ]
    same = firsts[1::6]  # the very same bytes again (the first copy's message, as ingested); none changed
    by_id = {ev.event_id: ev for ev in firsts}
    raw_of: dict[str, bytes] = {}  # the bytes of each first copy (a malformed message may carry its id too)
    for v in history.values:
        ev = parse(v, now, orjson.loads)
        if isinstance(ev, Event) and by_id.get(ev.event_id) == ev and ev.event_id not in raw_of:
            raw_of[ev.event_id] = v
    resent = [(ev.user_id, raw_of[ev.event_id]) for ev in same]
    fresh = make_traffic(300, seed=62, users=40, products=12, hours=1)
    assert not fresh.valid_ids & history.valid_ids
    keys: list[str | None] = [*(k for k, _ in changed), *(k for k, _ in resent)]
    later = Traffic(
        keys + fresh.keys,
        [v for _, v in changed] + [v for _, v in resent] + fresh.values,
        fresh.malformed,
        fresh.valid_ids | history.valid_ids,
        firsts + fresh.first_copies,
    )
    publish(kafka_broker, worker.topic, later)
    worker.start()
    worker.wait_done(len(later.values), timeout=90)
    worker.stop()
    # The first copies, each once: the ingested ones and the fresh events; not the changed copies of ingested
    # events (those sent with another user lost to the ingested copies' claims: the markers of that user's
    # tiles have never seen them), and not the same bytes again (their markers).
    assert_tiles_exact(redis_client, later)


def test_ingest_stops_before_writing_when_redis_is_unreachable(tmp_path: Path) -> None:
    """Exit code 1 naming the way out, and nothing of the batch written (a copy stored without its claim
    would let a later copy count online; without its tiles it would be missing online)."""
    traffic = make_traffic(50, seed=63, users=5, products=3, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"}
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1, (proc.stdout, proc.stderr[-2000:])
    assert "could not claim" in proc.stderr and "--no-speed" in proc.stderr, proc.stderr[-2000:]
    assert not (data / "raw_events").exists()
    out = run_fstore(["ingest", "--json", "--no-speed", str(path)], env, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["written"] == len(traffic.valid_ids)


def test_ingest_refuses_while_a_backfill_holds_the_speed_layer(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """``fstore backfill`` rebuilds tiles from ``raw_events`` and waits only for the workers it knows: ingest
    must not write tiles meanwhile. Exit 1 naming the hold; nothing written; once released, it goes on."""
    traffic = make_traffic(50, seed=64, users=5, products=3, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": redis_server.url}
    redis_client.set(HOLD_KEY, "backfill-1", ex=60)
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "holds the speed layer" in proc.stderr, (proc.stdout, proc.stderr[-2000:])
    assert not (data / "raw_events").exists()
    redis_client.delete(HOLD_KEY)
    out = run_fstore(["ingest", "--json", str(path)], env, tmp_path)
    assert json.loads(out.strip().splitlines()[-1])["tiled"] == len(traffic.valid_ids)


#: How long the injected slow step keeps the first batch in flight after its tiles (longer than a poll of
#: ``wait_held``; the registration is renewed meanwhile).
SLOW_S = 1.5


class SlowSpeed(IngestSpeed):
    """The real speed step (real Redis), slowed down after the first batch's tiles: the batch stays in flight
    — tiles written, ``raw_events`` not committed yet — for :data:`SLOW_S` seconds."""

    def __init__(self, settings: StreamSettings, name: str) -> None:
        super().__init__(settings, name=name)
        self.tiled = threading.Event()
        self.calls = 0

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        n = super().__call__(rows, hashes, now)
        self.calls += 1
        if self.calls == 1:
            self.tiled.set()
            time.sleep(SLOW_S)
        return n


def stored_ids(raw_uri: str) -> set[str]:
    """The event_ids in ``raw_events`` now (read with delta-rs directly, not through fstore)."""
    try:
        table = DeltaTable(raw_uri)
    except Exception:  # not created yet
        return set()
    return set(table.to_pyarrow_table(columns=["event_id"]).column("event_id").to_pylist())


def two_batches(tmp_path: Path, seed: int) -> tuple[Path, Traffic, Traffic]:
    """A message file of two parts with disjoint event_ids, each part one ingest batch."""
    first = make_traffic(120, seed=seed, users=8, products=4, hours=1)
    second = make_traffic(120, seed=seed + 1, users=8, products=4, hours=1)
    assert not first.valid_ids & second.valid_ids
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in first.values + second.values))
    return path, first, second


def test_backfill_waits_for_the_ingest_batch_in_flight_and_the_ingest_stops_at_the_next(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A backfill that sets its hold while an ingest batch is in flight must not read ``raw_events`` before
    that batch's commit: otherwise the batch's tiles, written before the hold, are replaced by a rebuild that
    lacks them while its rows land after the read — lost online. The ingest stops at the next batch boundary
    (naming the hold, nothing of that batch written) and leaves the registry at once, so the backfill does not
    wait out ``LIVE_S``. The backfill's own rebuild then gives the brute-force tiles of what was committed."""
    path, first, _ = two_batches(tmp_path, seed=71)
    raw = str(tmp_path / "data" / "raw_events")
    settings = StreamSettings(redis_url=redis_server.url, data_dir=str(tmp_path / "data"))
    speed = SlowSpeed(settings, name="ingest:test")
    seen: dict[str, object] = {}

    said: list[str] = []

    def backfill() -> None:  # `fstore backfill --view user_activity` (no batch view yet: the speed step only)
        assert speed.tiled.wait(30)
        started = time.monotonic()
        try:
            seen["report"] = run_backfill(
                "user_activity",
                BatchSettings(data_dir=settings.data_dir, redis_url=settings.redis_url),
                settings,
                run_batch=None,
                timeout=3 * LIVE_S,
                say=said.append,
            )
        finally:
            plan_source.use_plan(None)  # the backfill installs the applied plan in this process
        seen["waited"] = time.monotonic() - started

    helper = threading.Thread(target=backfill)
    helper.start()
    stopped: SpeedFailed | None = None
    try:
        with speed:
            ingestor = Ingestor(raw, str(tmp_path / "data" / "dead_letters"), speed=speed)
            try:
                ingestor.ingest_file(path, batch_size=len(first.values))
            except SpeedFailed as exc:
                stopped = exc
                seen["left"] = redis_client.hget(WORKERS_KEY, "ingest:test") is None  # before the caller's close
    finally:
        helper.join(60)
    assert not helper.is_alive()
    report = seen["report"]
    assert isinstance(report, BackfillReport), seen
    # The backfill's rebuild of user_activity from raw_events: had it read the table before the batch in
    # flight committed, that batch's tiles (written before the hold) would be gone — lost online.
    assert report.events == len(first.valid_ids), report
    assert stopped is not None, "the ingest wrote the next batch under the hold"
    assert "holds the speed layer (hold " in str(stopped), stopped
    assert "nothing of this batch was written" in str(stopped), stopped
    assert seen["left"], "the ingest stopped still registered"
    assert report.workers == 0  # the ingest left instead of acknowledging
    assert float(str(seen["waited"])) < LIVE_S  # not waited out: the ingest left the registry at once
    assert stored_ids(raw) == first.valid_ids  # nothing of the next batch
    assert_tiles_exact(redis_client, first)  # brute force over what was committed
    claimed = {as_text(f) for k in redis_client.scan_iter(match="fs:{claim:*}:c:*") for f in redis_client.hkeys(k)}
    assert claimed == first.valid_ids  # the first batch's claims; none of the next batch


def test_apply_waits_for_the_plan_of_an_ingest_in_flight(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """``fstore apply`` frees what a plan removed once every live writer runs it (``wait_following``): an ingest
    batch in flight writes with the plan it started with, so it must be seen running that plan until it ends,
    and not at all afterwards."""
    path, first, second = two_batches(tmp_path, seed=73)
    raw = str(tmp_path / "data" / "raw_events")
    settings = StreamSettings(redis_url=redis_server.url, data_dir=str(tmp_path / "data"))
    speed = SlowSpeed(settings, name="ingest:test")
    mine = fingerprint(current_plan())
    other = "0123456789abcdef"  # a newer plan the ingest does not run
    seen: dict[str, Any] = {}

    def apply() -> None:
        assert speed.tiled.wait(30)
        seen["plans"] = worker_plans(redis_client)
        seen["at"] = [parse_registration(redis_client.hget(WORKERS_KEY, "ingest:test"))[0]]
        wait_following(redis_client, mine, timeout=0.5)  # the ingest runs this one: no wait
        try:
            wait_following(redis_client, other, timeout=0.5)
        except TimeoutError as exc:
            seen["behind"] = str(exc)
        time.sleep(0.2)
        seen["at"].append(parse_registration(redis_client.hget(WORKERS_KEY, "ingest:test"))[0])

    helper = threading.Thread(target=apply)
    helper.start()
    try:
        with speed:
            ingestor = Ingestor(raw, str(tmp_path / "data" / "dead_letters"), speed=speed)
            report = ingestor.ingest_file(path, batch_size=len(first.values))
    finally:
        helper.join(60)
    assert report.written == len(first.valid_ids | second.valid_ids)
    assert seen["plans"] == {"ingest:test": mine}
    first_at, later_at = seen["at"]
    assert later_at > first_at  # renewed while the batch is in flight (a batch may outlast LIVE_S)
    assert "ingest:test" in str(seen.get("behind")) and mine[:12] in str(seen.get("behind")), seen
    assert redis_client.hget(WORKERS_KEY, "ingest:test") is None  # ended: removed, not left to lapse
    wait_following(redis_client, other, timeout=0.5)  # nothing waits for an ingest that ended


@pytest.mark.parametrize("end", ["success", "hold", "interrupt"])
def test_the_ingest_registration_is_removed_however_the_ingest_ends(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, end: str
) -> None:
    """``fstore ingest`` registers like a worker (``ingest:<host>:<pid>``, the plan it runs) while it writes,
    and removes the registration when it ends: done, stopped by a backfill's hold, or Ctrl-C."""
    traffic = make_traffic(3_000, seed=75, users=50, products=20, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    env = {**os.environ, "FSTORE_DATA_DIR": str(tmp_path / "data"), "FSTORE_REDIS_URL": redis_server.url}
    proc = subprocess.Popen(
        [FSTORE, "ingest", "--batch-size", "100", str(path)],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    name = f"ingest:{socket.gethostname()}:{proc.pid}"
    try:
        deadline = time.monotonic() + 60
        while redis_client.hget(WORKERS_KEY, name) is None and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.005)
        plans = worker_plans(redis_client)
        if end == "hold":
            redis_client.set(HOLD_KEY, "backfill-2", ex=60)
        elif end == "interrupt":
            proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert plans == {name: fingerprint(current_plan())}, (plans, err[-2000:])
    if end == "success":
        assert proc.returncode == 0, err[-2000:]
    elif end == "hold":
        assert proc.returncode == 1 and "holds the speed layer (hold backfill-2)" in err, err[-2000:]
    else:  # Ctrl-C stops between two batches (a batch's tiles never go without its raw_events commit)
        assert proc.returncode == 130 and "interrupted:" in err and "committed whole" in err, err[-2000:]
    assert redis_client.hget(WORKERS_KEY, name) is None


def test_an_ingest_stops_at_its_next_batch_once_another_plan_is_applied(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An ingest fixes its plan when it starts but registers only at its first batch: an ``fstore apply`` in
    between waited for nobody, so the ingest must not write under the plan it started with. Each batch, after
    registering, it compares the applied record with its plan and stops on another one (exit 1 from the
    command), deregistered and nothing of that batch written; the same plan recorded again changes nothing."""
    mine = current_plan()  # the process's plan, loaded before the repository moves
    repo = tmp_path / "repo"
    (repo / "data").mkdir(parents=True)
    monkeypatch.setenv("FSTORE_FEATURE_REPO", str(repo))
    settings = StreamSettings(redis_url=redis_server.url, data_dir=str(tmp_path / "data"))
    with IngestSpeed(settings, name="ingest:plan-test") as speed:
        assert speed.fingerprint == fingerprint(mine)
        speed.begin()  # never applied: runs the plan it has
        applied.save(repo, applied.AppliedPlan(plan=mine, applied_at=1))
        speed.begin()  # the same plan applied: goes on
        assert worker_plans(redis_client) == {"ingest:plan-test": fingerprint(mine)}
        other = plan_source.compile_dir(Path(__file__).resolve().parents[1] / "support" / "repos" / "meters")
        assert fingerprint(other) != fingerprint(mine)
        applied.save(repo, applied.AppliedPlan(plan=other, applied_at=2))
        with pytest.raises(SpeedFailed, match="fstore apply recorded another plan"):
            speed.begin()
        assert redis_client.hget(WORKERS_KEY, "ingest:plan-test") is None  # nothing waits for it any more


def test_a_batch_with_nothing_to_write_still_stops_at_the_hold(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """The hold is checked at every batch boundary, before anything of the batch is written — dead letters
    included: a batch of only invalid messages stops there too (exit 1), and once the hold is released the
    same file dead-letters each message once, with its reason."""
    bad = [b"{not json", orjson.dumps({"event_id": "x1"}), orjson.dumps([1, 2])]
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in bad))
    data = tmp_path / "data"
    env = {**os.environ, "FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": redis_server.url}
    redis_client.set(HOLD_KEY, "backfill-2", ex=60)
    proc = subprocess.run([FSTORE, "ingest", str(path)], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 1 and "holds the speed layer" in proc.stderr, (proc.stdout, proc.stderr[-2000:])
    assert not (data / "dead_letters").exists() and not (data / "raw_events").exists()
    redis_client.delete(HOLD_KEY)
    summary = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    assert (summary["invalid"], summary["written"]) == (len(bad), 0), summary
    reasons = DeltaTable(str(data / "dead_letters")).to_pyarrow_table(columns=["reason"]).column("reason").to_pylist()
    assert sorted(reasons) == sorted(["malformed_json", "malformed_json", "missing_field:event_type"]), reasons


class ConflictingSpeed:
    """A speed step that, during its first call, lets another writer commit to ``raw_events`` (so the batch's
    commit conflicts and is retried) and raises the hold: from then on :meth:`begin` refuses, as
    :class:`IngestSpeed` does under a backfill's hold. Records the event_ids of each call."""

    def __init__(self, other: Ingestor, other_batch: list[bytes]) -> None:
        self.other, self.other_batch = other, other_batch
        self.begins = 0
        self.held = False
        self.calls: list[list[str]] = []

    def begin(self) -> None:
        if self.held:
            raise SpeedFailed("held")
        self.begins += 1

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        self.calls.append([r["event_id"] for r in rows])
        if len(self.calls) == 1:
            self.other.ingest_batch(self.other_batch, "other", IngestReport("other"))
            self.held = True
        return len(rows)


def test_a_commit_lost_to_another_writer_is_retried_with_the_rows_checked_again_and_no_new_hold_check(
    tmp_path: Path,
) -> None:
    """A batch whose ``raw_events`` commit loses to a concurrent writer is checked again and retried; the
    speed step gets only the copies still to write (the other writer's copies of shared event_ids won: first
    stored), and the retry does not check the hold again — a batch once begun is finished, which is what
    ``fstore backfill`` waits for. Each event_id is stored once, the shared ones with the other writer's bytes."""
    traffic = make_traffic(200, seed=73, users=8, products=4, hours=1)
    firsts: dict[str, bytes] = {}
    for v in traffic.values:  # each valid event's first copy (the seed and the shared ids must be stored)
        try:
            eid = orjson.loads(v).get("event_id")
        except orjson.JSONDecodeError:
            continue
        if eid in traffic.valid_ids:
            firsts.setdefault(eid, v)
    mine = list(firsts.values())
    raw, dead = str(tmp_path / "raw_events"), str(tmp_path / "dead_letters")
    seed_row = Ingestor(raw, dead)  # the table exists: both writers append on top of a version
    seed_row.ingest_batch([mine[0]], "seed", IngestReport("seed"))
    shared = [orjson.loads(v)["event_id"] for v in mine[1:40]]
    others = [orjson.dumps({**orjson.loads(v), "quantity": 7}) for v in mine[1:40]]  # other payloads, same ids
    speed = ConflictingSpeed(Ingestor(raw, dead), others)
    report = IngestReport("mine")
    Ingestor(raw, dead, speed=speed).ingest_batch(mine, "mine", report)

    assert report.commit_retries == 1 and speed.begins == 1 and len(speed.calls) == 2, (report, speed.calls)
    first_try, retry = (set(c) for c in speed.calls)
    assert set(shared) <= first_try and not set(shared) & retry  # checked again: the other writer's won
    assert retry == first_try - set(shared)
    stored = DeltaTable(raw).to_pyarrow_table(columns=["event_id", "payload_hash"]).to_pylist()
    ids = [r["event_id"] for r in stored]
    assert len(ids) == len(set(ids)) == len(traffic.valid_ids), (len(ids), len(set(ids)), len(traffic.valid_ids))
    won = {r["event_id"]: r["payload_hash"] for r in stored}
    assert all(won[orjson.loads(o)["event_id"]] == payload_hash(o) for o in others)


class CrashAfterTiles(IngestSpeed):
    """The real speed step, then a crash: the batch's claims, tiles and markers are in Redis, its rows never
    reach ``raw_events`` (an ingest or a worker killed -9 between the two)."""

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        super().__call__(rows, hashes, now)
        raise SpeedFailed("killed after the tiles, before the raw_events commit")


def test_a_backfill_after_a_writer_died_between_tiles_and_raw_commit_keeps_every_event_once(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """A writer killed between its speed tiles and its ``raw_events`` commit leaves events counted online that
    ``raw_events`` lacks; its restart stores them (the file ingested again, or Kafka's redelivery to a worker).
    A backfill in between rebuilds its view from ``raw_events``, without them: it must rebuild that view's
    markers the same way, or the restarted writer finds their markers and never counts them in the rebuilt view
    (lost online until the next nightly run), while the views not rebuilt must keep skipping them. Every view's
    tiles then equal the brute force over all the events, each counted once."""
    _, first, second = two_batches(tmp_path, seed=77)
    part1, part2 = tmp_path / "part1.jsonl", tmp_path / "part2.jsonl"
    part1.write_bytes(b"".join(v + b"\n" for v in first.values))
    part2.write_bytes(b"".join(v + b"\n" for v in second.values))
    data = tmp_path / "data"
    raw, dead = str(data / "raw_events"), str(data / "dead_letters")
    settings = StreamSettings(redis_url=redis_server.url, data_dir=str(data))
    with IngestSpeed(settings, name="ingest:one") as speed:
        Ingestor(raw, dead, speed=speed).ingest_file(part1)
    with CrashAfterTiles(settings, name="ingest:two") as speed, pytest.raises(SpeedFailed, match="killed"):
        Ingestor(raw, dead, speed=speed).ingest_file(part2)
    assert stored_ids(raw) == first.valid_ids  # the second part is counted online, not stored
    try:
        report = run_backfill(
            "user_activity",
            BatchSettings(data_dir=str(data), redis_url=redis_server.url),
            settings,
            run_batch=None,
            say=lambda _: None,
        )
    finally:
        plan_source.use_plan(None)  # the backfill installs the applied plan in this process
    assert report.events == len(first.valid_ids)
    with IngestSpeed(settings, name="ingest:three") as speed:
        again = Ingestor(raw, dead, speed=speed).ingest_file(part2)  # the restart: the same messages again
    assert again.written == len(second.valid_ids) and stored_ids(raw) == first.valid_ids | second.valid_ids
    both = Traffic(
        keys=first.keys + second.keys,
        values=first.values + second.values,
        malformed=first.malformed + second.malformed,
        valid_ids=first.valid_ids | second.valid_ids,
        first_copies=first.first_copies + second.first_copies,
    )
    assert_tiles_exact(redis_client, both)  # user_activity rebuilt, product_engagement not: both exact
    # The stored events' markers were rebuilt with the tiles: handed to the speed step again (as a worker's
    # redelivery is: no raw_events check), they count nowhere.
    reader = Ingestor(raw, dead).reader
    now = time.time_ns() // 1000
    rows: dict[str, tuple[Row, str]] = {}
    for v in first.values:
        row = reader.parse(v, now)
        if isinstance(row, dict):
            rows.setdefault(row["event_id"], (row, payload_hash(v)))
    with IngestSpeed(settings, name="ingest:four") as speed:
        speed.begin()
        assert speed([r for r, _ in rows.values()], [h for _, h in rows.values()], now) == 0
    assert_tiles_exact(redis_client, both)


def test_a_backfill_that_dies_part_way_leaves_its_whole_view_refused_until_run_again(
    tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The backfill deletes a view's speed hashes and rebuilds them in pipelines. Interrupted in between (Ctrl-C,
    Redis gone), the view's tiles are half there: every feature of the view — not only the pending ones — must
    be refused (409) rather than served undercounted, until a backfill run again completes; then the values are
    the brute force's."""
    repo = tmp_path / "repo"
    shutil.copytree(Path(__file__).resolve().parents[2] / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    monkeypatch.setenv("FSTORE_FEATURE_REPO", str(repo))
    applied.save(repo, applied.AppliedPlan(compiled("ecommerce"), time.time_ns() // 1000))  # nothing pending
    data = tmp_path / "data"
    traffic = make_traffic(3_000, seed=79, users=600, products=40, hours=1)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    env = {"FSTORE_DATA_DIR": str(data), "FSTORE_REDIS_URL": redis_server.url}
    report = json.loads(run_fstore(["ingest", "--json", str(path)], env, tmp_path).strip().splitlines()[-1])
    assert report["tiled"] == len(traffic.valid_ids), report
    stream = StreamSettings(redis_url=redis_server.url, data_dir=str(data))
    batch = BatchSettings(redis_url=redis_server.url, data_dir=str(data))
    user = traffic.first_copies[0].user_id
    api = ApiSettings(redis_url=redis_server.url, data_dir=str(data))

    def interrupted(done: int) -> None:
        raise KeyboardInterrupt  # Ctrl-C after the first pipeline of the rebuild

    try:
        with pytest.raises(KeyboardInterrupt):
            run_backfill("user_activity", batch, stream, run_batch=None, progress=interrupted, say=lambda _: None)
        plan_source.use_plan(None)
        record = applied.load(repo)
        assert record is not None
        view = record.plan.view("user_activity")
        assert set(record.pending) >= {f"user_activity:{f}" for f in view.feature_names}, record.pending
        with TestClient(create_app(api)) as client:
            r = client.get("/features", params={"user_id": user, "features": "user_activity:clicks_1h"})
            assert r.status_code == 409 and "fstore backfill --view user_activity" in r.text, r.text
            whole = client.get("/features", params={"user_id": user, "features": "user_activity"})
            named = [f for f in view.feature_names if f"user_activity:{f}" in whole.json()["detail"]]
            assert whole.status_code == 409 and named == list(view.feature_names), whole.text  # each one named
        again = run_backfill("user_activity", batch, stream, run_batch=None, say=lambda _: None)
        plan_source.use_plan(None)
        assert set(again.served) == {f"user_activity:{f}" for f in view.feature_names}, again.served
        done = applied.load(repo)
        assert done is not None and done.pending == (), done
        assert_tiles_exact(redis_client, traffic)
        with TestClient(create_app(api)) as client:
            r = client.get("/features", params={"user_id": user, "features": "user_activity:clicks_1h"})
            assert r.status_code == 200, r.text
    finally:
        plan_source.use_plan(None)
