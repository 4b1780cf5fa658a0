"""The local services: real Redis, a real Apache Kafka broker, and ``fstore services`` end to end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import pytest
import redis
from confluent_kafka import Consumer, Producer, TopicPartition

from fstore.devsvc import services as localsvc
from fstore.devsvc.services import Broker, RedisServer, ServiceError, ensure_topics, list_topics, pid_alive
from fstore.kafka.client import producer_config, read_topic

pytestmark = pytest.mark.integration


def topic_name() -> str:
    return f"t-{uuid.uuid4().hex[:10]}"


def produce(
    bootstrap: str, topic: str, items: Sequence[tuple[bytes | None, bytes]], producer: Producer | None = None
) -> None:
    """Produce and assert every message was delivered."""
    prod = producer or Producer(producer_config(bootstrap))
    errors: list[object] = []
    for key, value in items:
        prod.produce(topic, value, key, on_delivery=lambda err, _msg: errors.append(err) if err else None)
    assert prod.flush(30) == 0
    assert errors == []


def test_redis_ping_set_get(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    assert redis_server.url == f"redis://127.0.0.1:{redis_server.port}/0"
    assert redis_client.ping()
    assert redis_client.dbsize() == 0
    redis_client.set("k", b"\x00v\xff")
    assert redis_client.get("k") == b"\x00v\xff"
    assert redis_server.healthy()


def test_broker_round_trip_keeps_bytes_and_per_key_order(kafka_broker: Broker) -> None:
    topic = topic_name()
    assert ensure_topics(kafka_broker.bootstrap, {topic: 3}) == [topic]
    assert ensure_topics(kafka_broker.bootstrap, {topic: 3}) == []  # idempotent
    assert list_topics(kafka_broker.bootstrap)[topic] == 3
    items = [(f"u{i % 7}".encode(), f'{{"i":{i}}}'.encode() + bytes([i % 256])) for i in range(2000)]
    produce(kafka_broker.bootstrap, topic, items)

    records = read_topic(kafka_broker.bootstrap, topic)
    assert sorted((r.key, r.value) for r in records) == sorted(items)
    assert len({r.partition for r in records}) > 1
    for key in {k for k, _ in items}:  # order per key = order per partition
        assert [r.value for r in records if r.key == key] == [v for k, v in items if k == key]


def test_consumer_group_subscribe(kafka_broker: Broker) -> None:
    """Group coordination works: a subscribed consumer gets every message and commits."""
    topic = topic_name()
    ensure_topics(kafka_broker.bootstrap, {topic: 2})
    items = [(f"k{i}".encode(), f"v{i}".encode()) for i in range(100)]
    produce(kafka_broker.bootstrap, topic, items)
    consumer = Consumer(
        {
            "bootstrap.servers": kafka_broker.bootstrap,
            "group.id": f"g-{topic}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 1000,
        }
    )
    try:
        consumer.subscribe([topic])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < len(items) and time.monotonic() < deadline:
            got += [m.value() or b"" for m in consumer.consume(1000, 0.5) if m.error() is None]
        consumer.commit(asynchronous=False)
    finally:
        consumer.close()
    assert sorted(got) == sorted(v for _, v in items)


def committed(bootstrap: str, group: str, topic: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return sum(tp.offset for tp in consumer.committed([TopicPartition(topic, 0)], timeout=10))
    finally:
        consumer.close()


def test_broker_killed_restarts_on_same_port_with_its_log(private_broker: Broker) -> None:
    """SIGKILL, then start: same port, every acknowledged message and committed offset is still there."""
    broker = private_broker
    topic, group = topic_name(), f"g-{uuid.uuid4().hex[:6]}"
    broker.ensure_topics({topic: 1})
    producer = Producer(producer_config(broker.bootstrap, {"message.timeout.ms": 60000}))
    produce(broker.bootstrap, topic, [(b"k", b"before-1"), (b"k", b"before-2")], producer)
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": group, "enable.auto.commit": False})
    consumer.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    consumer.close()
    port, controller_port, pid = broker.port, broker.controller_port, broker.pid
    assert pid is not None

    os.kill(pid, signal.SIGKILL)  # a crash: no controlled shutdown
    broker.stop()  # reap
    broker.start()
    assert (broker.port, broker.controller_port) == (port, controller_port) and broker.pid != pid
    assert not pid_alive(pid)
    assert [r.value for r in read_topic(broker.bootstrap, topic)] == [b"before-1", b"before-2"]
    assert committed(broker.bootstrap, group, topic) == 1

    # the same idempotent producer goes on after the restart, without a duplicate
    produce(broker.bootstrap, topic, [(b"k", b"after-1"), (b"k", b"after-2")], producer)
    assert [r.value for r in read_topic(broker.bootstrap, topic)] == [b"before-1", b"before-2", b"after-1", b"after-2"]
    assert broker.log_path.read_text().count("=== ") >= 3  # format + both runs: the log keeps them all
    assert Broker(state_dir=broker.state_dir).port == port  # a new handle finds the saved ports


def test_port_in_use_is_refused(tmp_path: Path, redis_server: RedisServer) -> None:
    clash = RedisServer(port=redis_server.port, state_dir=tmp_path, start_timeout=10)
    with pytest.raises(ServiceError, match="already in use"):
        clash.start()
    assert not clash.is_running() and not clash.pid_file.exists()
    assert redis_server.healthy()  # the owner of the port is untouched


class BadRedis(RedisServer):
    def command(self) -> list[str]:
        return [*super().command(), "--no-such-directive", "x"]


def test_start_failure_reports_log_tail(tmp_path: Path) -> None:
    bad = BadRedis(state_dir=tmp_path, start_timeout=10)
    with pytest.raises(ServiceError, match=r"(?s)exited during start-up.*no-such-directive"):
        bad.start()
    assert not bad.is_running() and not bad.pid_file.exists()


def test_services_die_with_their_owner(tmp_path: Path) -> None:
    """A service started by a process that is then SIGKILLed does not outlive it."""
    script = (
        "import sys, time\nfrom fstore.devsvc.services import Broker, RedisServer\n"
        f"r = RedisServer(state_dir={str(tmp_path)!r}).start()\n"
        f"b = Broker(state_dir={str(tmp_path)!r}).start()\n"
        "print(r.pid, b.pid, flush=True)\ntime.sleep(120)\n"
    )
    owner = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert owner.stdout is not None
        pids = [int(p) for p in owner.stdout.readline().split()]
        assert len(pids) == 2 and all(pid_alive(p) for p in pids)
    finally:
        owner.kill()
        owner.wait()
    deadline = time.monotonic() + 10
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(pid_alive(p) for p in pids)


def fstore_cli(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FSTORE_")} | (env or {})
    return subprocess.run(
        [sys.executable, "-c", "from fstore.cli import main; main()", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_cli_services_up_status_env_down(tmp_path: Path) -> None:
    state = tmp_path / ".fstore"
    try:
        up = fstore_cli(tmp_path, "services", "up")
        assert up.returncode == 0, up.stderr
        assert "redis   started" in up.stdout and "broker  started" in up.stdout

        env = dict(
            line.split("=", 1) for line in (state / "services.env").read_text().splitlines() if not line.startswith("#")
        )
        assert set(env) == {"FSTORE_REDIS_URL", "FSTORE_KAFKA_BOOTSTRAP"}
        assert redis.Redis.from_url(env["FSTORE_REDIS_URL"]).ping()
        assert {"events": 1, "events.dlq": 1}.items() <= list_topics(env["FSTORE_KAFKA_BOOTSTRAP"]).items()
        pids = {s.name: s.pid for s in localsvc.status(state)}
        assert all(pids.values())

        again = fstore_cli(tmp_path, "services", "up")  # idempotent: reuses the running pair
        assert again.returncode == 0 and again.stdout.count("already running") == 2
        assert {s.name: s.pid for s in localsvc.status(state)} == pids
        # An existing topic keeps its partitions: up says how many it has, and that the variable did nothing
        # (probe-scale: it printed "events (12 partitions)" for a topic of 6).
        more = fstore_cli(tmp_path, "services", "up", env={"FSTORE_TOPIC_PARTITIONS": "4"})
        assert more.returncode == 0, more.stderr
        assert list_topics(env["FSTORE_KAFKA_BOOTSTRAP"])["events"] == 1
        assert "topics  events (1 partition), events.dlq (1 partition)" in more.stdout
        assert "events already exists with 1 partition: FSTORE_TOPIC_PARTITIONS=4 applies only" in more.stderr
        assert "WARNING" not in again.stderr

        dead = pids["redis"]
        assert dead is not None
        os.kill(dead, signal.SIGKILL)  # Redis dies: up starts it again where services.env points
        deadline = time.monotonic() + 10
        while pid_alive(dead) and time.monotonic() < deadline:
            time.sleep(0.05)
        revived = fstore_cli(tmp_path, "services", "up")
        assert revived.returncode == 0 and "redis   started" in revived.stdout, revived.stdout + revived.stderr
        assert localsvc.read_env(state) == env and redis.Redis.from_url(env["FSTORE_REDIS_URL"]).ping()
        pids = {s.name: s.pid for s in localsvc.status(state)}

        status = fstore_cli(tmp_path, "services", "status")
        assert status.returncode == 0 and status.stdout.count("healthy") == 2
        exports = fstore_cli(tmp_path, "services", "env").stdout.splitlines()
        assert sorted(exports) == sorted(f"export {k}={v}" for k, v in env.items())

        down = fstore_cli(tmp_path, "services", "down")
        assert down.returncode == 0, down.stderr
        assert not (state / "services.env").exists()
        assert not any(pid_alive(p) for p in pids.values() if p is not None)
        assert fstore_cli(tmp_path, "services", "status").returncode == 1

        back = fstore_cli(tmp_path, "services", "up")  # the broker comes back on its port, with its log
        assert back.returncode == 0, back.stderr
        again_env = localsvc.read_env(state)
        assert again_env["FSTORE_KAFKA_BOOTSTRAP"] == env["FSTORE_KAFKA_BOOTSTRAP"]
        assert (state / "kafka-logs" / "meta.properties").exists()
    finally:
        localsvc.down(state)
