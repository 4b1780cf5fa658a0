"""A real Prometheus server for the tests: the stack's scrape config and alert rules, targets on loopback."""

from __future__ import annotations

import math
import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import yaml

from fstore.devsvc.services import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "infra" / "prometheus" / "prometheus.yml"


class Prometheus:
    """``prometheus`` on 127.0.0.1 with infra/prometheus/prometheus.yml, each scrape job's target replaced
    by ``targets[job]`` (jobs not given are dropped), scraping and evaluating rules every second."""

    def __init__(self, state: Path, targets: dict[str, str]) -> None:
        exe = shutil.which("prometheus")
        assert exe, "prometheus is not installed (make setup installs it with apt)"
        self.exe, self.state, self.port = exe, state, free_port()
        cfg = yaml.safe_load(CONFIG.read_text())
        cfg["global"] = {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"}
        cfg["rule_files"] = [str(CONFIG.parent / f) for f in cfg["rule_files"]]
        jobs = [j for j in cfg["scrape_configs"] if j["job_name"] in targets]
        assert {j["job_name"] for j in jobs} == set(targets), "a target for a job the config does not have"
        for j in jobs:
            j["static_configs"] = [{"targets": [targets[j["job_name"]]]}]
        cfg["scrape_configs"] = jobs
        state.mkdir(parents=True, exist_ok=True)
        self.config = state / "prometheus.yml"
        self.config.write_text(yaml.safe_dump(cfg))
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Prometheus:
        with open(self.state / "prometheus.log", "wb") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [
                    self.exe,
                    f"--config.file={self.config}",
                    f"--storage.tsdb.path={self.state / 'tsdb'}",
                    f"--web.listen-address=127.0.0.1:{self.port}",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log_tail()
            try:
                if httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "prometheus did not start\n" + self.log_tail()
            time.sleep(0.2)

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log_tail(self) -> str:
        return (self.state / "prometheus.log").read_text(errors="replace")[-3000:]

    def api(self, path: str, **params: str) -> Any:
        r = httpx.get(f"{self.url}/api/v1/{path}", params=params, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", (path, params, body)
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        """Instant vector result of ``expr`` now."""
        data = self.api("query", query=expr)
        assert data["resultType"] == "vector", (expr, data)
        return list(data["result"])

    def finite(self, expr: str) -> list[float]:
        """The finite values of ``expr`` now (NaN, e.g. a quantile of no observations, left out)."""
        return [v for r in self.query(expr) if math.isfinite(v := float(r["value"][1]))]

    def targets_up(self) -> dict[str, float]:
        return {r["metric"]["job"]: float(r["value"][1]) for r in self.query("up")}
