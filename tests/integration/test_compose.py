"""infra/docker-compose.yml: valid, the whole stack present with healthchecks, and only real commands."""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from fstore.cli import main

pytestmark = pytest.mark.integration

INFRA = Path(__file__).resolve().parents[2] / "infra"
COMPOSE = INFRA / "docker-compose.yml"


def services() -> dict[str, Any]:
    spec: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    found: dict[str, Any] = spec["services"]
    return found


def test_compose_config_validates() -> None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        cmd = ["docker", "compose", "-f", str(COMPOSE), "config", "-q"]
    else:
        exe = shutil.which("docker-compose")
        assert exe, "neither `docker compose` nor docker-compose is installed (make setup installs it)"
        cmd = [exe, "-f", str(COMPOSE), "config", "-q"]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert res.returncode == 0, res.stderr


def fstore_commands(svc: dict[str, Any]) -> list[list[str]]:
    """Every ``fstore`` invocation of a service: its command (the image's entrypoint is ``fstore``), the
    command a scheduler runs after ``--``, and ``fstore ...`` inside a shell command."""
    entry, cmd = svc.get("entrypoint"), svc.get("command")
    found: list[list[str]] = []
    if entry is None and isinstance(cmd, list):
        if "--" in cmd:
            outer, inner = cmd[: cmd.index("--")], cmd[cmd.index("--") + 1 :]
            assert inner[0] == "fstore", inner
            found += [outer, inner[1:]]
        else:
            found.append(cmd)
    elif entry and entry[0] == "/bin/sh" and isinstance(cmd, list):
        for part in " ".join(cmd).replace("(", " ").replace(")", " ").split("&&"):
            for piece in part.split("||"):
                words = shlex.split(piece)
                if words and words[0] == "fstore":
                    found.append(words[1:])
    return found


def test_every_fstore_command_exists_in_the_cli() -> None:
    runner = CliRunner()
    checked = 0
    for name, svc in services().items():
        if svc.get("image") != "fstore:local":
            continue
        for args in fstore_commands(svc):
            res = runner.invoke(main, [args[0], "--help"])
            assert res.exit_code == 0, (name, args, res.output)
            # the options given exist too: every --option appears in that command's help
            for opt in (a for a in args[1:] if a.startswith("--")):
                assert opt in res.output, (name, opt)
            checked += 1
    assert checked >= 11  # history (2), stream, publisher, api, three schedulers with their jobs


def test_the_whole_stack_is_there_with_healthchecks() -> None:
    svc = services()
    needed = {
        "kafka",
        "redis",
        "stream",
        "api",
        "batch-scheduler",
        "compact-scheduler",
        "consistency-scheduler",
        "prometheus",
        "grafana",
    }
    assert needed <= set(svc)
    for name in needed:
        assert "test" in svc[name].get("healthcheck", {}), name
    assert svc["kafka"]["image"].startswith("apache/kafka:")
    env = svc["kafka"]["environment"]
    assert env["KAFKA_PROCESS_ROLES"] == "broker,controller"  # KRaft: no ZooKeeper
    assert "EXTERNAL://localhost:9094" in env["KAFKA_ADVERTISED_LISTENERS"] and "9094:9094" in svc["kafka"]["ports"]
    assert svc["redis"]["command"][svc["redis"]["command"].index("--appendonly") + 1] == "yes"
    api = svc["api"]["command"]
    assert (
        api[0] == "serve" and api[api.index("--host") + 1] == "0.0.0.0" and "/health" in str(svc["api"]["healthcheck"])
    )
    assert svc["publisher"]["command"][:2] == ["publish", "--live"]
    assert svc["stream"]["environment"]["FSTORE_STREAM_METRICS_HOST"] == "0.0.0.0"  # reachable by Prometheus
    batch = svc["batch-scheduler"]["command"]
    assert batch[0] == "schedule" and batch[batch.index("--") + 1 :][:2] == ["fstore", "batch"]
    assert "{yesterday}" in batch and "--textfile" in batch
    assert svc["feast-apply"]["entrypoint"] == ["feast", "apply"]
    assert "feast-registry:/app/feature_repo/data" in svc["feast-apply"]["volumes"]


def test_prometheus_scrapes_every_fstore_service_on_its_port() -> None:
    svc = services()
    prom = yaml.safe_load((INFRA / "prometheus" / "prometheus.yml").read_text())
    mounted = [v for v in svc["prometheus"]["volumes"] if v.endswith(":/etc/prometheus:ro")]
    assert mounted == ["./prometheus:/etc/prometheus:ro"]
    for job in prom["scrape_configs"]:
        for target in job["static_configs"][0]["targets"]:
            host, port = target.split(":")
            if host == "localhost":
                continue
            assert host in svc, (job["job_name"], host)
            assert f":{port}/" in str(svc[host]["healthcheck"]["test"]), (host, port)  # the port it serves
    grafana = svc["grafana"]["volumes"]
    assert "./grafana/dashboards:/var/lib/grafana/dashboards:ro" in grafana
    assert (INFRA / "grafana" / "dashboards" / "fstore.json").exists()


def test_image_runs_as_a_user_and_the_build_context_is_small() -> None:
    docker = (INFRA / "Dockerfile").read_text()
    users = [line.split()[1] for line in docker.splitlines() if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}
    ignored = (INFRA.parent / ".dockerignore").read_text().split()
    assert {".git", ".venv", "data", ".fstore"} <= set(ignored)
