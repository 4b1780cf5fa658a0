"""The speed layer under test: generated traffic, its brute-force tiles, and the worker as a process."""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import redis
from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
from confluent_kafka.admin import AdminClient

from examples.synth.generator import MALFORMED, GeneratorConfig, generate
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, free_port
from fstore.kafka import client as kafka_io
from tests.support.bruteforce import dedupe, hop_by_table
from tests.support.legacy.events_example import Event, parse
from tests.support.legacy.features import VIEWS, WindowedFeature

ROOT = Path(__file__).resolve().parents[2]
SECOND = 1_000_000
PARTITIONS = 2


@dataclass
class Traffic:
    """Generated messages in publish order and what the pipeline must make of them."""

    keys: list[str | None]
    values: list[bytes]
    malformed: Counter[tuple[bytes, str]]
    valid_ids: set[str]
    first_copies: list[Event]


def make_traffic(events: int, seed: int, users: int = 2_000, products: int = 300, hours: float = 2) -> Traffic:
    """Traffic over the last ``hours`` with 3% duplicates, 3% late and 2% malformed messages."""
    now = time.time_ns() // 1000
    cfg = GeneratorConfig(
        start=now - int(hours * 3600 * SECOND),
        end=now,
        events=events,
        users=users,
        products=products,
        duplicate_rate=0.03,
        late_rate=0.03,
        malformed_rate=0.02,
        pii_rate=0.01,
    )
    keys: list[str | None] = []
    values: list[bytes] = []
    malformed: Counter[tuple[bytes, str]] = Counter()
    first: dict[str, Event] = {}
    for b in generate(cfg, seed, dumps=orjson.dumps):
        keys += b.keys
        values += b.values
        for v, flag, reason in zip(b.values, b.flags.tolist(), b.reasons, strict=True):
            if flag & MALFORMED:
                malformed[(v, str(reason))] += 1
                continue
            ev = parse(v, now, orjson.loads)
            assert isinstance(ev, Event), (v, ev)
            first.setdefault(ev.event_id, ev)  # publish order = log order per key (= per partition)
    return Traffic(keys, values, malformed, set(first), list(first.values()))


def expected_fields(events: list[Event]) -> dict[str, dict[str, float]]:
    """Independent tiles: Redis key → {field: value} (hop table and keys restated, not imported)."""
    cells: dict[tuple[str, str, int, int, str], list[float]] = {}
    for view in VIEWS.values():
        wanted: set[tuple[int, str, str, str]] = set()
        for f in view.features:
            if isinstance(f, WindowedFeature):
                wanted.add((hop_by_table(f.window), f.measure.name, f.measure.event_type, str(f.measure.value)))
        for ev in events:
            entity = ev.user_id if view.entity.join_key == "user_id" else ev.product_id
            if entity is None:
                continue
            for size, measure, etype, kind in wanted:
                if ev.event_type != etype:
                    continue
                x = (ev.price or 0.0) * ev.quantity if kind == "revenue" else 1.0
                start = ev.event_time - ev.event_time % size
                c = cells.setdefault((view.name, entity, size, start, measure), [0, 0.0, math.inf, -math.inf])
                c[0] += 1
                c[1] += x
                c[2] = min(c[2], x)
                c[3] = max(c[3], x)
    out: dict[str, dict[str, float]] = {}
    for (view_name, entity, size, start, measure), (n, s, lo, hi) in cells.items():
        day = time.strftime("%Y%m%d", time.gmtime(start // SECOND))
        prefix = f"{size // SECOND}:{start // SECOND}:{measure}"
        out.setdefault(f"fs:{{{view_name}|{entity}}}:s:{day}", {}).update(
            {f"{prefix}:c": n, f"{prefix}:s": s, f"{prefix}:n": lo, f"{prefix}:x": hi}
        )
    return out


def redis_fields(client: redis.Redis | redis.RedisCluster) -> dict[str, dict[str, float]]:
    out = {}
    for key in client.scan_iter(match="fs:*:s:*", count=5000):
        out[key.decode()] = {k.decode(): float(v) for k, v in client.hgetall(key).items()}  # type: ignore[union-attr]
    return out


def assert_tiles_exact(client: redis.Redis | redis.RedisCluster, traffic: Traffic) -> None:
    want, got = expected_fields(traffic.first_copies), redis_fields(client)
    assert set(got) == set(want), f"keys differ: missing {len(set(want) - set(got))}, extra {len(set(got) - set(want))}"
    bad: list[tuple[object, ...]] = []
    for key, fields in want.items():
        if set(fields) != set(got[key]):
            bad.append((key, "fields", sorted(set(fields) ^ set(got[key]))[:4]))
            continue
        for f, v in fields.items():
            ok = math.isclose(got[key][f], v, rel_tol=1e-9, abs_tol=1e-9) if f.endswith(":s") else got[key][f] == v
            if not ok:
                bad.append((key, f, v, got[key][f]))
    assert not bad, f"{len(bad)} differing fields, e.g. {bad[:5]}"
    ttl = client.ttl(next(iter(got)))
    assert 7 * 86400 < ttl <= 8 * 86400
    marker = next(client.scan_iter(match="fs:*:m:*", count=1000))  # a marker generation: lives T to 2T
    assert client.type(marker) == b"hash" and 7 * 86400 < client.ttl(marker) <= 16 * 86400


def assert_raw_and_dlq(broker: Broker, dlq: str, data_dir: Path, traffic: Traffic, exact_dlq: bool) -> None:
    raw = raw_log.read_table(str(data_dir / "raw_events"), ["event_id"])
    ids = set(pc.unique(raw.column("event_id")).to_pylist())
    assert ids == traffic.valid_ids
    records = kafka_io.read_topic(broker.bootstrap, dlq, timeout=60)
    got = Counter((r.value, reason) for r, reason in dlq_reasons(broker, dlq, records))
    if exact_dlq:
        assert got == traffic.malformed
    else:  # after a crash the DLQ is at-least-once
        assert set(got) == set(traffic.malformed)


def dlq_reasons(broker: Broker, topic: str, records: list[kafka_io.Record]) -> list[tuple[kafka_io.Record, str]]:
    """Pair DLQ records with their ``fstore-reason`` header (read with headers)."""
    headers = dlq_headers(broker, topic)
    return [(r, headers[(r.partition, r.offset)]["fstore-reason"].decode()) for r in records]


def dlq_headers(broker: Broker, topic: str) -> dict[tuple[int, int], dict[str, bytes]]:
    """The headers of every DLQ record by ``(partition, offset)``."""
    consumer = Consumer(
        {
            "bootstrap.servers": broker.bootstrap,
            "group.id": f"h-{uuid.uuid4().hex[:6]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    out: dict[tuple[int, int], dict[str, bytes]] = {}
    try:
        parts = sorted(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        todo, deadline = set(parts), time.monotonic() + 60
        while todo and time.monotonic() < deadline:
            for m in consumer.consume(5000, 0.5):
                if m.error() is not None:
                    todo.discard(m.partition())
                    continue
                headers = {k: bytes(v or b"") for k, v in m.headers() or []}  # type: ignore[str-unpack, arg-type]
                assert re.fullmatch(rb"\d{4}-\d\d-\d\dT[\d:.]+Z", headers["fstore-ingested-at"])
                out[(m.partition() or 0, m.offset() or 0)] = headers
    finally:
        consumer.close()
    return out


def assert_dlq_exact_by_source(broker: Broker, dlq: str, events_topic: str, traffic: Traffic) -> None:
    """After a crash the DLQ may hold replayed copies; deduplicated on their key (the source position
    ``<topic>:<partition>:<offset>``) it must hold every malformed message exactly once, each pointing at
    the message of the events topic it quarantines."""
    source = {
        f"{events_topic}:{r.partition}:{r.offset}".encode(): r.value
        for r in kafka_io.read_topic(broker.bootstrap, events_topic, timeout=60)
    }
    headers = dlq_headers(broker, dlq)
    once: dict[bytes, tuple[bytes, str]] = {}
    for r in kafka_io.read_topic(broker.bootstrap, dlq, timeout=60):
        h = headers[(r.partition, r.offset)]
        assert r.key is not None and source[r.key] == r.value, (r.key, h)
        once.setdefault(r.key, (r.value, h["fstore-reason"].decode()))
    assert Counter(once.values()) == traffic.malformed


def assert_raw_exact(data_dir: Path, traffic: Traffic) -> None:
    """Every valid event in ``raw_events`` at least once, and the first-ingested copy of each (brute-force
    order on ``(ingested_at, payload_hash)``) is the first copy in log order, field for field."""
    table = raw_log.read_table(str(data_dir / "raw_events"))
    at = table.schema.get_field_index("event_time")
    raw = table.set_column(at, "event_time", table.column(at).cast(pa.int64())).to_pylist()  # epoch µs
    copies = [
        (
            r["ingested_at"],
            r["payload_hash"],
            Event(
                r["event_id"],
                r["event_type"],
                r["user_id"],
                r["product_id"],
                r["event_time"],
                r["price"],
                r["quantity"],
                r["session_id"],
            ),
        )
        for r in raw
    ]
    got = {e.event_id: e for e in dedupe(copies)}
    want = {e.event_id: e for e in traffic.first_copies}
    assert set(got) == set(want)
    bad = [(got[i], e) for i, e in want.items() if got[i] != e]
    assert not bad, f"{len(bad)} winners differ, e.g. {bad[:3]}"


#: How often the tests ask the broker for a group's committed offsets: a quarter of a second loses little
#: of a test's time once the work is done (each ask is one short consumer connection on loopback).
POLL_S = 0.25

# group-coordinator states a just-started broker reports for a few seconds; committed() asks again
COORDINATOR_NOT_READY = frozenset(
    {
        KafkaError.NOT_COORDINATOR,
        KafkaError.COORDINATOR_LOAD_IN_PROGRESS,
        KafkaError.COORDINATOR_NOT_AVAILABLE,
        KafkaError._TIMED_OUT,
        KafkaError._TRANSPORT,
    }
)


class WorkerProcess:
    """``python -m jobs.stream`` with its own group, topics, data dir and metrics port.

    ``like=w`` makes another member of ``w``'s consumer group instead (same topics, group and data dir, its
    own metrics port and log): the workers share the partitions.
    """

    topic: str
    dlq: str
    group: str
    partitions: int
    env: dict[str, str]

    def __init__(
        self,
        tmp: Path,
        broker: Broker,
        redis_url: str,
        partitions: int = PARTITIONS,
        like: WorkerProcess | None = None,
        **extra: str,
    ) -> None:
        tag = uuid.uuid4().hex[:8]
        self.tmp, self.broker, self.name = tmp, broker, "worker" if like is None else f"worker-{tag}"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.runs = 0
        if like is not None:
            self.topic, self.dlq, self.group, self.partitions = like.topic, like.dlq, like.group, like.partitions
            self.env = {**like.env, "FSTORE_STREAM_METRICS_PORT": str(self.port), **extra}
            return
        self.topic, self.dlq, self.group = f"events-{tag}", f"dlq-{tag}", f"fstore-stream-{tag}"
        self.partitions = partitions
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FSTORE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "FSTORE_REDIS_URL": redis_url,
            "FSTORE_DATA_DIR": str(tmp / "data"),
            "FSTORE_EVENTS_TOPIC": self.topic,
            "FSTORE_DLQ_TOPIC": self.dlq,
            "FSTORE_TOPIC_PARTITIONS": str(partitions),
            "FSTORE_STREAM_APP_ID": self.group,
            "FSTORE_STREAM_METRICS_PORT": str(self.port),
            "FSTORE_STREAM_SESSION_TIMEOUT_S": "6",
            "FSTORE_STREAM_REBALANCE_TIMEOUT_S": "6",
            "FSTORE_STREAM_LOG_LEVEL": "warning",
            **extra,
        }
        broker.ensure_topics({self.topic: partitions, self.dlq: 1})

    def start(self) -> None:
        self.runs += 1
        log = open(self.tmp / f"{self.name}-{self.runs}.log", "wb")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "jobs.stream"],
            cwd=self.tmp,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def kill(self, sig: int = signal.SIGKILL) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def metric(self, name: str) -> float:
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return 0.0
        m = re.search(rf"^{name} (\S+)$", body, re.M)
        return float(m.group(1)) if m else 0.0

    def metric_sum(self, name: str) -> float:
        """A metric summed over its label sets (0 when the worker does not answer)."""
        try:
            body = urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=2).read().decode()
        except OSError:
            return 0.0
        return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", body, re.M))

    def committed(self) -> int:
        """Offsets committed by the worker's group, summed over partitions (= messages done); -1 while the
        broker cannot say yet (its group coordinator is still loading or moving: a retriable error that
        Apache Kafka returns in the first seconds after a start), so :meth:`wait_done` asks again."""
        c = Consumer({"bootstrap.servers": self.broker.bootstrap, "group.id": self.group, "enable.auto.commit": False})
        try:
            tps = c.committed([TopicPartition(self.topic, p) for p in range(self.partitions)], timeout=10)
            return sum(max(tp.offset, 0) for tp in tps)
        except KafkaException as exc:
            if exc.args and exc.args[0].code() in COORDINATOR_NOT_READY:
                return -1
            raise
        finally:
            c.close()

    def assigned(self) -> set[int]:
        """Partitions of the events topic that the group coordinator assigns to this process (its consumer's
        client id is ``<group>-<pid>``); empty while the group is rebalancing or the process is not in it."""
        assert self.proc is not None
        admin = AdminClient({"bootstrap.servers": self.broker.bootstrap})
        try:
            desc = admin.describe_consumer_groups([self.group], request_timeout=10)[self.group].result(timeout=15)
        except KafkaException:
            return set()
        return {
            tp.partition
            for m in desc.members
            if m.client_id == f"{self.group}-{self.proc.pid}" and m.assignment is not None
            for tp in m.assignment.topic_partitions
            if tp.topic == self.topic
        }

    def wait_done(self, total: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None and self.proc.poll() is None, self.log_tail()
            if self.committed() >= total:
                return
            time.sleep(POLL_S)
        raise AssertionError(f"committed {self.committed()} of {total} after {timeout} s\n{self.log_tail()}")

    def log_tail(self) -> str:
        return (self.tmp / f"{self.name}-{self.runs}.log").read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill(signal.SIGTERM)


Factory = Callable[..., WorkerProcess]


def publish(broker: Broker, topic: str, traffic: Traffic, lo: int = 0, hi: int | None = None) -> None:
    rep = kafka_io.publish([(traffic.keys[lo:hi], traffic.values[lo:hi])], broker.bootstrap, topic)
    assert rep.ok, rep.summary()
