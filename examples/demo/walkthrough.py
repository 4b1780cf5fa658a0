"""``make demo``: the whole pipeline end to end on local services, printing every step.

Run as ``python -m examples.demo [--keep-services] [--users N] [--days N]`` (``make demo``). Each step runs
the command a user would type, echoed with a ``$`` prompt, so the demo doubles as a walkthrough of the
shipped example (it lives with the example: it names the example's features):

services → 30 days of history (generate + ingest) → `fstore apply` of the example repository (a copy of
``feature_repo/`` under data/demo) → nightly batch job for yesterday (Delta tables, DQ gate, Redis batch
view) → on a re-run in the same checkout, `fstore repair` (an earlier run's live events are in raw_events,
Redis starts empty) → stream worker on live Kafka traffic → online API with example calls → consistency check of
online values against point-in-time training joins → adding a feature end to end (edit the repository,
`fstore plan`, `fstore apply`, the API's 409 until built, `fstore backfill`, the new values).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
LOGS = Path(".fstore/demo-logs")
#: Where the demo's online API listens and is asked.
HOST = "127.0.0.1"
#: The demo's own copy of the example repository (the one it edits to add a feature).
REPO = Path("data/demo/feature_repo")
#: The feature the demo adds: the spread of a shopper's order values over 7 days.
NEW_AGGREGATION = '        Aggregation(column="purchase", function="std", time_window=D7, name="order_value_std_7d"),\n'
NEW_FIELD = '        Field(name="order_value_std_7d", dtype=Float64, description="Spread of order values, 7 days"),\n'


def add_feature(repo: Path) -> None:
    """Edit the repository as a user would: one aggregation and its Field in user_activity."""
    path = repo / "features.py"
    text = path.read_text()
    agg = '        Aggregation(column="purchase", function="max", time_window=D7, name="max_order_value_7d"),\n'
    field = '        Field(name="max_order_value_7d", dtype=Float64, description="Largest purchase revenue, 7 days"),\n'
    if agg not in text or field not in text:
        sys.exit(f"demo: {path} does not declare user_activity's max_order_value_7d as shipped")
    path.write_text(text.replace(agg, agg + NEW_AGGREGATION).replace(field, field + NEW_FIELD))
    print(f"\n# Edited {path}: user_activity gets")
    print(NEW_AGGREGATION.rstrip() + "\n" + NEW_FIELD.rstrip())


def _exe(cmd: list[str]) -> list[str]:
    return [str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0], *cmd[1:]]


def echo(cmd: list[str], cwd: Path = ROOT, env_note: str = "") -> None:
    """Print a command as a user would type it."""
    where = "" if cwd == ROOT else f"(cd {cwd.relative_to(ROOT)} && "
    print(f"\n$ {env_note}{where}{shlex.join(cmd)}{')' if where else ''}", flush=True)


def run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None, env_note: str = "") -> None:
    """Echo and run one command; stop the demo with its exit status if it fails."""
    echo(cmd, cwd, env_note)
    res = subprocess.run(_exe(cmd), cwd=cwd, env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"demo: `{shlex.join(cmd)}` failed with exit status {res.returncode}")


def start(cmd: list[str], name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a long-running command in the background, output to .fstore/demo-logs/<name>.log; ``env``:
    variables added to the environment (echoed)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    note = "".join(f"{k}={v} " for k, v in (env or {}).items())
    print(f"\n$ {note}{shlex.join(cmd)} > {LOGS / (name + '.log')} 2>&1 &", flush=True)
    log = open(LOGS / f"{name}.log", "wb")  # noqa: SIM115 - lives as long as the process
    full = {**os.environ, **env} if env else None
    return subprocess.Popen(_exe(cmd), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=full)


def services_env() -> dict[str, str]:
    """The running services' variables, as ``eval "$(fstore services env)"`` exports them."""
    res = subprocess.run(_exe(["fstore", "services", "env"]), cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode != 0:
        sys.exit(f"demo: `fstore services env` failed with exit status {res.returncode}: {res.stderr[-2000:]}")
    out: dict[str, str] = {}
    for line in res.stdout.splitlines():
        words = shlex.split(line)
        if len(words) == 2 and words[0] == "export" and "=" in words[1]:
            key, _, value = words[1].partition("=")
            out[key] = value
    return out


def replay_figure(since_s: int) -> dict[str, object]:
    """Replay what the API served (``fstore check-consistency --from-samples``) and return its report."""
    cmd = ["fstore", "check-consistency", "--from-samples", "--since", str(since_s), "--settle", "0",
           "--in-flight", "1", "--json"]  # fmt: skip
    echo(cmd)
    res = subprocess.run(_exe(cmd), cwd=ROOT, capture_output=True, text=True, check=False)
    if res.returncode not in (0, 1) or not res.stdout.strip():
        sys.exit(f"demo: `{shlex.join(cmd)}` failed with exit status {res.returncode}: {res.stderr[-2000:]}")
    report: dict[str, object] = json.loads(res.stdout.strip().splitlines()[-1])
    print(json.dumps({k: v for k, v in report.items() if k != "examples"}))  # as the command printed it
    return report


def stop(proc: subprocess.Popen[bytes], name: str) -> None:
    """SIGTERM (the stream worker flushes its raw sink on it), then wait; no-op if already stopped."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    # uvicorn shuts down cleanly on SIGTERM, then re-raises the signal: -15 is its normal end
    how = "stopped by SIGTERM" if proc.returncode == -signal.SIGTERM else f"exit {proc.returncode}"
    print(f"stopped {name} ({how}); log: {LOGS / (name + '.log')}")


def show(
    method: str, url: str, params: dict[str, str] | None = None, body: dict[str, object] | None = None
) -> dict[str, object]:
    """Call the API like curl would and print the call and (a shortened) answer."""
    if method == "GET":
        q = "&".join(f"{k}={v}" for k, v in (params or {}).items())
        print(f"\n$ curl -s '{url}{'?' + q if q else ''}'")
    else:
        print(f"\n$ curl -s -X {method} {url} -H 'content-type: application/json' -d '{json.dumps(body)}'")
    r = httpx.request(method, url, params=params, json=body, timeout=30)
    answer = r.json()
    text = json.dumps(answer, indent=1)
    print(text if len(text) < 2500 else text[:2500] + "\n ...")
    return dict(answer)


def summarize_new_feature(base: str, users: int = 300) -> None:
    """POST /features for the first users and say how many have a value of the new feature, with examples."""
    ids = [f"u{i:06d}" for i in range(1, users + 1)]
    body = {"entities": [{"user_id": u} for u in ids], "features": ["user_activity:order_value_std_7d"]}
    print(f'\n$ curl -s -X POST {base}/features -d \'{{"entities": [{users} users], "features": [...]}}\'')
    rows = httpx.post(f"{base}/features", json=body, timeout=30).json()["rows"]
    got = [(u, r["values"]["user_activity:order_value_std_7d"]) for u, r in zip(ids, rows, strict=True)]
    have = [(u, v) for u, v in got if v is not None]
    print(f"{len(have)} of {users} users have two or more orders in 7 days (std defined); e.g.")
    for u, v in have[:3]:
        print(f"  {u}: order_value_std_7d = {v:.4f}")


def api_port(asked: int | None, preferred: int = 8000) -> int:
    """The online API's port: ``asked`` when given; else ``preferred`` when it is free on 127.0.0.1, else a
    free one (another program on 8000 must not answer the demo's requests in the API's place)."""
    if asked is not None:
        return asked
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server binds: TIME_WAIT is no owner
        try:
            sock.bind((HOST, preferred))
            return preferred
        except OSError:
            pass
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))  # the OS picks a free one
        port = int(sock.getsockname()[1])
    print(f"demo: port {preferred} is taken; the online API uses port {port}")
    return port


def wait_http(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    """Wait until ``url`` answers 200 (and ``proc``, the process that serves it, still runs)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            sys.exit(f"demo: the process serving {url} exited with status {proc.returncode} (see {LOGS})")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    sys.exit(f"demo: {url} did not come up within {timeout:.0f}s (see {LOGS})")


def main() -> None:
    p = argparse.ArgumentParser(description="fstore end-to-end demo on local services")
    p.add_argument("--keep-services", action="store_true", help="leave Redis and the broker running")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--products", type=int, default=1_000)
    p.add_argument("--days", type=int, default=30)
    p.add_argument("--live-seconds", type=int, default=20, help="seconds of live traffic for the stream worker")
    p.add_argument("--port", type=int, help="port of the online API (default 8000, or a free one if 8000 is taken)")
    args = p.parse_args()
    started = time.perf_counter()
    history = Path("data/demo/history.parquet")
    yesterday = (datetime.now(UTC) - timedelta(days=1)).date().isoformat()
    procs: list[tuple[subprocess.Popen[bytes], str]] = []
    try:
        print("fstore demo: services, history, Feast, nightly batch, live stream, online API, consistency")
        run(["fstore", "services", "up"])
        env = {**os.environ, **services_env()}
        run(
            [
                "fstore",
                "generate",
                "--out",
                str(history),
                "--users",
                str(args.users),
                "--products",
                str(args.products),
                "--days",
                str(args.days),
                "--duplicate-rate",
                "0.01",
                "--late-rate",
                "0.01",
                "--malformed-rate",
                "0.001",
                "--pii-rate",
                "0.01",
            ]
        )
        rerun = (ROOT / "data" / "raw_events" / "_delta_log").is_dir()  # raw_events of an earlier demo run
        run(["fstore", "ingest", str(history)])
        shutil.rmtree(REPO, ignore_errors=True)
        shutil.copytree(ROOT / "feature_repo", REPO, ignore=shutil.ignore_patterns("data", "__pycache__"))
        os.environ["FSTORE_FEATURE_REPO"] = str(REPO.resolve())
        env["FSTORE_FEATURE_REPO"] = os.environ["FSTORE_FEATURE_REPO"]
        print(
            f"\n# Every fstore process below runs the repository FSTORE_FEATURE_REPO={REPO} (a copy of feature_repo/)"
        )
        run(["fstore", "apply"], env=env, env_note='eval "$(fstore services env)"; ')
        print("\n# The history was backfilled just now, so every event arrived days after its event_time;")
        print("# the demo counts an event as late only after 31 days (FSTORE_DQ_LATE_AFTER_S) for this run.")
        run(
            ["fstore", "batch", "--date", yesterday],
            env={**env, "FSTORE_DQ_LATE_AFTER_S": str(31 * 86_400)},
            env_note=f"FSTORE_DQ_LATE_AFTER_S={31 * 86_400} ",
        )
        if rerun:
            print("\n# raw_events holds an earlier run's live events, but Redis started empty: rebuild the speed")
            print("# view since the cutover from raw_events, as after any Redis restart (docs/runbook.md)")
            run(["fstore", "repair", "--no-progress"], env=env)
        worker = start(["fstore", "stream"], "stream")
        procs.append((worker, "stream"))
        run(
            [
                "fstore",
                "publish",
                "--live",
                "--rate",
                "2000",
                "--duration",
                str(args.live_seconds),
                "--malformed-rate",
                "0.01",
                "--duplicate-rate",
                "0.01",
                "--no-progress",
            ]
        )
        # every answer is kept for the consistency replay (production keeps FSTORE_API_SAMPLE_RATE, 0.1%)
        port = api_port(args.port)
        api = start(["fstore", "serve", "--port", str(port)], "api", {"FSTORE_API_SAMPLE_RATE": "1"})
        procs.append((api, "api"))
        base = f"http://{HOST}:{port}"
        wait_http(f"{base}/health", api)
        time.sleep(3)  # let the worker commit its last batch
        show("GET", f"{base}/health")
        show("GET", f"{base}/features", params={"user_id": "u000042", "features": "user_activity"})
        show(
            "GET",
            f"{base}/features",
            params={"product_id": "p00001", "features": "product_engagement:ctr_1h,product_engagement:ctr_24h"},
        )
        show(
            "POST",
            f"{base}/features",
            body={
                "entities": [{"user_id": "u000001"}, {"user_id": "u000002"}],
                "features": ["user_activity:clicks_24h", "user_activity:revenue_7d"],
            },
        )
        stop(worker, "stream")  # flushes the raw sink: every event up to now is in raw_events
        run(["fstore", "check-consistency", "--api-url", base, "--sample", "1000"])
        time.sleep(1.5)  # the API appends its samples every second
        print("\n# Consistency watched in production: replay every answer the API served (and sampled)")
        report = replay_figure(int(time.perf_counter() - started) + 60)

        print("\n# Adding a feature to the running system: edit, plan, apply, (409 until built), backfill, read")
        add_feature(REPO)
        run(["fstore", "plan"], env=env)
        run(["fstore", "apply"], env=env)
        time.sleep(1.5)  # the API follows the applied record within a second
        new = {"user_id": "u000042", "features": "user_activity:order_value_std_7d,user_activity:avg_order_value_7d"}
        show("GET", f"{base}/features", params=new)
        late = str(31 * 86_400)
        run(
            ["fstore", "backfill", "--view", "user_activity"],
            env={**env, "FSTORE_DQ_LATE_AFTER_S": late},
            env_note=f"FSTORE_DQ_LATE_AFTER_S={late} ",
        )
        time.sleep(1.5)
        show("GET", f"{base}/features", params=new)
        summarize_new_feature(base)
        run(["fstore", "check-consistency", "--api-url", base, "--sample", "300"], env=env)
        print(f"\ndemo finished in {time.perf_counter() - started:.0f}s")
        rate = report["mismatch_rate"]
        print("\nOperations (docs/operations.md, docs/runbook.md):")
        print("  dashboard    infra/grafana/dashboards/fstore.json  (docker compose: Grafana at http://localhost:3000)")
        print(
            "  alert rules  infra/prometheus/alerts.yml, tested by infra/prometheus/alerts_test.yml (make alerts-test)"
        )
        print(
            f"  consistency  {report['values_compared']:,} served values replayed through the point-in-time engine: "
            f"{report['mismatches']} mismatches ({'n/a' if rate is None else f'{rate:.4%}'})"
        )
    finally:
        for proc, name in procs:
            stop(proc, name)
        if not args.keep_services:
            run(["fstore", "services", "down"])


if __name__ == "__main__":
    main()
