"""A local Apache Kafka broker in KRaft mode: one JVM that is both controller and broker (docs/adr/0005).

The jars come from Maven Central through ``fstore services install`` (``make setup``), cached in
:attr:`fstore.settings.Settings.jar_cache`; nothing downloads here. Everything the broker keeps lives
under its state directory:

* ``kafka-logs/``: the log (topics, committed offsets in ``__consumer_offsets``, the KRaft metadata log),
  formatted once with ``kafka.tools.StorageTool``; a restart, even after SIGKILL, finds it all again;
* ``broker.json``: the two ports (clients, controller) and the cluster id, so a restart — or
  ``fstore services up`` after ``down`` — listens where clients already point;
* ``broker.properties`` and ``broker-log4j2.properties``: written at each start; ``broker.log``: output.
"""

from __future__ import annotations

import base64
import json
import shutil
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Self

from fstore.devsvc.process import HOST, LocalService, ServiceError, free_port
from fstore.jvm.artifacts import KAFKA
from fstore.jvm.maven import cached
from fstore.settings import STATE_DIR, get_settings

#: JVM options: a small heap suits a local broker (Kafka's own default is 1 GiB).
JVM_OPTS = ("-Xms128m", "-Xmx512m", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20", "-Djava.awt.headless=true")
LOG4J = """\
status = warn
appender.out.type = Console
appender.out.name = STDOUT
appender.out.layout.type = PatternLayout
appender.out.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = WARN
rootLogger.appenderRef.out.ref = STDOUT
logger.server.name = kafka.server.KafkaRaftServer
logger.server.level = INFO
"""


def java_bin() -> str:
    """Path of ``java``.

    Raises:
        ServiceError: when it is not on PATH.
    """
    path = shutil.which("java")
    if path is None:
        raise ServiceError("java is not on PATH: the Apache Kafka broker needs OpenJDK 17 (`make setup` installs it)")
    return path


def kafka_classpath(cache: Path | None = None) -> str:
    """``<dir>/*`` of the cached Apache Kafka jars.

    Raises:
        ServiceError: when they are not cached, saying how to fetch them.
    """
    cache = cache or get_settings().jar_cache
    jars = cached(KAFKA, cache)
    if jars is None:
        raise ServiceError(
            f"the Apache Kafka jars ({KAFKA.coordinates[0]}) are not in {cache}: "
            "run `make setup` or `fstore services install`"
        )
    return f"{jars[0].parent}/*"


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, URL-safe base64 without padding (what ``random-uuid`` prints)."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()


class Broker(LocalService):
    """Apache Kafka (KRaft, combined broker + controller) on 127.0.0.1, with its log on disk.

    Args:
        port: the client (PLAINTEXT) port; ``None`` reuses the one in ``broker.json`` or picks a free one.
        state_dir: the broker's directory (log, ports, config, output).
        controller_port: the KRaft controller port; ``None`` as for ``port``.

    Stopped with SIGTERM (a controlled shutdown that closes the log cleanly); SIGKILL loses nothing a
    client had acknowledged (``acks=all`` writes are in the page cache), and the next start recovers the
    log's tail.
    """

    name = "broker"

    def __init__(
        self,
        port: int | None = None,
        state_dir: str | Path = STATE_DIR,
        *,
        start_timeout: float = 90.0,
        die_with_parent: bool = True,
        controller_port: int | None = None,
    ) -> None:
        super().__init__(port, state_dir, start_timeout=start_timeout, die_with_parent=die_with_parent)
        saved = self._saved()
        self.port = port or saved.get("port")
        self.controller_port: int | None = controller_port or saved.get("controller_port")
        self.cluster_id: str = saved.get("cluster_id") or new_cluster_id()

    # -- files ------------------------------------------------------------------------------------
    @property
    def log_dir(self) -> Path:
        """``<state_dir>/kafka-logs``: topics, offsets and the metadata log."""
        return self.state_dir / "kafka-logs"

    @property
    def config_path(self) -> Path:
        """``<state_dir>/broker.properties``."""
        return self.state_dir / "broker.properties"

    @property
    def ports_path(self) -> Path:
        """``<state_dir>/broker.json``: ports and cluster id, kept across restarts."""
        return self.state_dir / "broker.json"

    def _saved(self) -> dict[str, Any]:
        try:
            data = json.loads(self.ports_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return self.bootstrap

    def properties(self) -> str:
        """``broker.properties``: one node, loopback listeners, replication factor 1 everywhere."""
        log_dir = self.log_dir.resolve()
        return "\n".join(
            [
                "process.roles=broker,controller",
                "node.id=1",
                f"controller.quorum.voters=1@{HOST}:{self.controller_port}",
                f"listeners=PLAINTEXT://{HOST}:{self.port},CONTROLLER://{HOST}:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://{HOST}:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
                f"log.dirs={log_dir}",
                "num.partitions=1",
                "offsets.topic.replication.factor=1",
                "offsets.topic.num.partitions=4",
                "transaction.state.log.replication.factor=1",
                "transaction.state.log.min.isr=1",
                "share.coordinator.state.topic.replication.factor=1",
                "share.coordinator.state.topic.min.isr=1",
                "group.initial.rebalance.delay.ms=0",
                "broker.heartbeat.interval.ms=500",
                "broker.session.timeout.ms=3000",
                "",
            ]
        )

    def _java(self, main: str, *args: str) -> list[str]:
        log4j = self.state_dir.resolve() / "broker-log4j2.properties"
        return [java_bin(), *JVM_OPTS, f"-Dlog4j2.configurationFile={log4j}", "-cp", kafka_classpath(), main, *args]

    def command(self) -> list[str]:
        """``java … kafka.Kafka broker.properties``."""
        return self._java("kafka.Kafka", str(self.config_path.resolve()))

    # -- lifecycle --------------------------------------------------------------------------------
    def _spawn(self) -> None:
        """Write the config (ports chosen and saved), format the log directory once, then start the JVM."""
        if self.controller_port is None or self.controller_port == self.port:
            self.controller_port = free_port()
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ports_path.write_text(
            json.dumps({"port": self.port, "controller_port": self.controller_port, "cluster_id": self.cluster_id})
            + "\n"
        )
        (self.state_dir / "broker-log4j2.properties").write_text(LOG4J)
        self.config_path.write_text(self.properties())
        if not (self.log_dir / "meta.properties").exists():
            self._format()
        super()._spawn()

    def _format(self) -> None:
        # "--cluster-id=": an id may start with "-" (URL-safe base64), which the separate-argument form misreads
        argv = self._java(
            "kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}", "-c", str(self.config_path)
        )
        res = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False)
        with open(self.log_path, "a") as log:
            log.write(f"=== format {self.log_dir}\n{res.stdout}{res.stderr}")
        if res.returncode != 0:
            raise ServiceError(f"cannot format the Kafka log directory {self.log_dir}:\n{res.stdout}{res.stderr}")

    def check(self, timeout: float) -> None:
        """A metadata request must list this broker."""
        if not list_brokers(self.bootstrap, timeout):
            raise ServiceError(f"broker at {self.bootstrap} lists no broker yet")

    def ensure_topics(self, topics: Mapping[str, int]) -> list[str]:
        """Create the missing topics (name → partitions); returns the names created."""
        return ensure_topics(self.bootstrap, topics)

    def restart(self) -> Self:
        """Stop and start again on the same ports with the same log (topics, offsets, DLQ all kept)."""
        self.stop()
        return self.start()


def _metadata(bootstrap: str, timeout: float) -> Any:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        return admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ServiceError(f"Kafka broker at {bootstrap} did not answer a metadata request: {exc}") from None


def list_brokers(bootstrap: str, timeout: float = 5.0) -> list[int]:
    """Node ids of the brokers the cluster metadata lists."""
    return sorted(_metadata(bootstrap, timeout).brokers)


def list_topics(bootstrap: str, timeout: float = 5.0) -> dict[str, int]:
    """Topic name → partition count, by a metadata request.

    Raises:
        ServiceError: if the broker does not answer within ``timeout`` seconds.
    """
    return {name: len(t.partitions) for name, t in _metadata(bootstrap, timeout).topics.items()}


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 15.0) -> list[str]:
    """Create the topics (name → partitions, replication 1) that do not exist yet.

    Existing topics are kept even if their partition count differs. Create topics before producing:
    a producer would otherwise auto-create them with the broker's default partition count.

    Returns:
        The names that were created.

    Raises:
        ServiceError: on any error but "already exists".
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    existing = list_topics(bootstrap, timeout)
    wanted = [NewTopic(n, p, 1) for n, p in topics.items() if n not in existing]
    if not wanted:
        return []
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # must outlive the futures
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"cannot create topic {name!r} on {bootstrap}: {exc}") from None
    return created
