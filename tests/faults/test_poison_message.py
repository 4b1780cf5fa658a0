"""Issue 12, row 1 (and Build 1): a valid-looking message that a sink cannot take.

Before: the worker logged "batch failed; stopping the worker", exited 0 and crashed again on every restart
at the same offset; ``fstore ingest`` of a file holding it died with an ``ArrowInvalid`` traceback and
wrote nothing. Now the row's own value (``quantity`` 3,000,000,000) is ``invalid_type:quantity`` at
validation, and a message that passes validation but that a sink still refuses — here Redis itself, by an
ACL that forbids the keys of one entity, a real error reply in the middle of a batch — is isolated and
dead-lettered as ``unprocessable`` while the stream goes on; an outage that lasts ends the worker with a
non-zero exit code, never 0; ``fstore ingest`` dead-letters a row Arrow refuses and writes the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer, free_port
from fstore.ingest import Ingestor
from fstore.kafka import client as kafka_io
from jobs.stream.faults import EXIT_OUTAGE
from tests.support.stream import Factory, assert_tiles_exact, dlq_reasons, make_traffic, publish

pytestmark = pytest.mark.faults

POISON_USER = "zz-poison"  # the ACL below forbids the keys of this entity


def poison_messages(now_ms: int) -> list[bytes]:
    """Two valid page views of the forbidden user (no product: only user views) and the row's own value."""
    base = {"event_type": "page_view", "user_id": POISON_USER, "event_time": now_ms - 60_000}
    return [
        orjson.dumps({**base, "event_id": "poison-1"}),
        orjson.dumps({**base, "event_id": "poison-2", "event_time": now_ms - 30_000}),
        orjson.dumps({**base, "event_id": "q-3e9", "user_id": "u-q", "quantity": 3_000_000_000}),
    ]


def listening_hosts(port: int) -> set[str]:
    """Local addresses listening on ``port`` (IPv4, from /proc/net/tcp)."""
    out = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        host, p = local.split(":")
        if int(p, 16) == port and state == "0A":
            out.add(".".join(str(int(host[i : i + 2], 16)) for i in (6, 4, 2, 0)))
    return out


def test_a_message_redis_refuses_is_dead_lettered_and_the_worker_goes_on(
    kafka_broker: Broker,
    redis_server: RedisServer,
    redis_client: redis.Redis,
    worker_factory: Factory,
    tmp_path: Path,
) -> None:
    user = f"faults-{free_port()}"
    redis_client.acl_setuser(
        user,
        enabled=True,
        passwords=["+pw"],
        # every fstore key but those of entities starting with 'z' (POINTER_KEY, HEARTBEAT_KEY: fs:[^{]*;
        # the event_id claims: fs:{claim:*)
        keys=["fs:[^{]*", "fs:{*|[^z]*", "fs:{claim:*"],
        commands=["+@all"],
    )
    try:
        traffic = make_traffic(3_000, seed=61, users=200, products=40)
        poison = poison_messages(int(time.time() * 1000))
        url = redis_server.url.replace("redis://", f"redis://{user}:pw@")
        w = worker_factory(kafka_broker, FSTORE_REDIS_URL=url)
        w.start()
        mid = len(traffic.values) // 2
        publish(kafka_broker, w.topic, traffic, 0, mid)
        rep = kafka_io.publish([([POISON_USER, POISON_USER, "u-q"], poison)], kafka_broker.bootstrap, w.topic)
        assert rep.ok, rep.summary()
        publish(kafka_broker, w.topic, traffic, mid)
        w.wait_done(len(traffic.values) + len(poison), timeout=120)  # committed past the poison: no crash loop
        assert listening_hosts(w.port) == {"127.0.0.1"}  # the worker's metrics bind to the configured host
        assert w.metric('fstore_stream_events_invalid_total{reason="unprocessable"}') == 2
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    finally:
        redis_client.acl_deluser(user)

    assert_tiles_exact(redis_client, traffic)
    stored = set(raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"]).column("event_id").to_pylist())
    assert stored == traffic.valid_ids
    records = kafka_io.read_topic(kafka_broker.bootstrap, w.dlq, timeout=60)
    assert len({r.key for r in records}) == len(records)  # one record per source position
    got = Counter((r.value, reason) for r, reason in dlq_reasons(kafka_broker, w.dlq, records))
    want = traffic.malformed + Counter(
        {(poison[0], "unprocessable"): 1, (poison[1], "unprocessable"): 1, (poison[2], "invalid_type:quantity"): 1}
    )
    assert got == want


def test_an_outage_that_lasts_stops_the_worker_with_a_non_zero_exit_code(
    kafka_broker: Broker, worker_factory: Factory
) -> None:
    w = worker_factory(
        kafka_broker, FSTORE_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0", FSTORE_STREAM_OUTAGE_EXIT_S="2"
    )
    w.start()
    rep = kafka_io.publish([(["u1"], [b'{"event_id": "e1"}'])], kafka_broker.bootstrap, w.topic)
    assert rep.ok, rep.summary()
    assert w.proc is not None
    w.proc.wait(90)
    assert w.proc.returncode == EXIT_OUTAGE, w.log_tail()
    assert "stopping with exit code 69" in (w.tmp / f"worker-{w.runs}.log").read_text(errors="replace")


def test_a_redis_cluster_unreachable_at_start_up_is_an_outage_not_a_crash(
    kafka_broker: Broker, worker_factory: Factory
) -> None:
    """No node of the Redis Cluster answers when the worker starts: exit 69 (an outage: restart it once Redis is
    back) with one CRITICAL line naming it, not Faust's crash report and exit 1."""
    w = worker_factory(kafka_broker, FSTORE_REDIS_URL=f"redis://127.0.0.1:{free_port()}", FSTORE_REDIS_CLUSTER="true")
    w.start()
    assert w.proc is not None
    w.proc.wait(90)
    log = (w.tmp / f"worker-{w.runs}.log").read_text(errors="replace")
    assert w.proc.returncode == EXIT_OUTAGE, w.log_tail()
    assert "cannot start with exit code 69: RedisClusterException" in log and "Traceback" not in log, log[-3000:]


def test_fstore_ingest_dead_letters_a_row_arrow_refuses_and_writes_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The late failure forced where it happened in the row (the Arrow conversion of raw_events): the file
    is not aborted, the message is dead-lettered as unprocessable, every other event is written."""
    traffic = make_traffic(2_000, seed=62, users=100, products=20)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    victim = sorted(traffic.valid_ids)[7]
    rows_table = raw_log.rows_table

    def arrow(schema: Any, rows: Any, *args: Any) -> Any:
        if any(r["event_id"] == victim for r in rows):
            raise OverflowError("value too large to convert to int32")  # what pyarrow raised for the row
        return rows_table(schema, rows, *args)

    monkeypatch.setattr(raw_log, "rows_table", arrow)
    raw_uri, dead_uri = str(tmp_path / "raw_events"), str(tmp_path / "dead_letters")
    report = Ingestor(raw_uri, dead_uri).ingest_file(path, batch_size=500)
    assert report.rejected["unprocessable"] == 1 and report.written == len(traffic.valid_ids) - 1
    stored = set(raw_log.read_table(raw_uri, ["event_id"]).column("event_id").to_pylist())
    assert stored == traffic.valid_ids - {victim}
    dead = raw_log.read_table(dead_uri)
    assert dead.column("reason").to_pylist().count("unprocessable") == 1
