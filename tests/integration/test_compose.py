"""infra/docker-compose.yml is valid and runs only commands that exist."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from fstore.cli import main

pytestmark = pytest.mark.integration

COMPOSE = Path(__file__).resolve().parents[2] / "infra" / "docker-compose.yml"


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


def test_compose_services_have_healthchecks_and_real_commands() -> None:
    spec = yaml.safe_load(COMPOSE.read_text())
    services = spec["services"]
    assert {"kafka", "redis"} <= set(services)
    for name in ("kafka", "redis"):
        assert "healthcheck" in services[name], name
    runner = CliRunner()
    for name, svc in services.items():
        cmd = svc.get("command")
        if svc.get("image") == "fstore:local" and isinstance(cmd, list) and svc.get("entrypoint") is None:
            res = runner.invoke(main, [cmd[0], "--help"])
            assert res.exit_code == 0, (name, res.output)
