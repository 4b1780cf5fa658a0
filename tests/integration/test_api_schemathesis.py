"""Property-based fuzzing of the online API from its own OpenAPI schema: no input gives a 5xx.

The app runs as ``fstore serve`` (uvicorn, one worker) on 127.0.0.1 against a real Redis holding batch and
speed tiles with a published batch pointer; schemathesis generates valid and invalid requests for every
operation (query strings, JSON bodies, headers). A 503 would mean Redis trouble, which this test does not
inject, so every status >= 500 fails. Bounded: a fixed number of examples per operation and a deadline.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode

from fstore.devsvc.services import HOST, RedisServer, free_port
from tests.support.online import C, load, make_events

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MAX_EXAMPLES = 200  # per operation and mode; the whole run stays well under two minutes on 2 cores


@pytest.fixture(scope="module")
def api_url(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of ``fstore serve`` on a Redis loaded with tiles (stopped after the module)."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    load(client, make_events(21, 2000), "v1", C)
    client.close()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "FSTORE_API_KEY"}
    env.update(FSTORE_REDIS_URL=redis_server.url, PYTHONPATH=str(ROOT))
    log = tmp_path_factory.mktemp("api") / "serve.log"
    fstore = str(Path(sys.executable).with_name("fstore"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [fstore, "serve", "--host", HOST, "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                if httpx.get(f"{base}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        yield base
    finally:
        proc.terminate()
        proc.wait(15)
    assert "Traceback" not in log.read_text(), log.read_text()


OPERATIONS = [("GET", "/features"), ("POST", "/features"), ("GET", "/health"), ("GET", "/metrics")]


@pytest.fixture(scope="module")
def api_schema(api_url: str) -> schemathesis.BaseSchema:
    """The schema the running app serves at /openapi.json."""
    return schemathesis.openapi.from_url(f"{api_url}/openapi.json")


def test_no_version_banner(api_url: str) -> None:
    """`fstore serve` answers without a Server header (no software or version for scanners)."""
    r = httpx.get(f"{api_url}/health", timeout=5)
    assert r.status_code == 200 and "server" not in r.headers


def test_schema_lists_the_operations(api_schema: schemathesis.BaseSchema) -> None:
    found = {(r.ok().method.upper(), r.ok().path) for r in api_schema.get_all_operations()}  # type: ignore[union-attr]
    assert set(OPERATIONS) <= found


# Hypothesis drives schemathesis' strategies directly: schemathesis' own pytest loader
# (`schemathesis.pytest.from_fixture`) fails under pytest 9 (`Function` has no `_nodeid`).
# Operations without inputs have no negative cases and only one positive one.
@pytest.mark.parametrize(
    ("method", "path", "mode"),
    [
        *((m, p, mode) for m, p in OPERATIONS[:2] for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)),
        *((m, p, GenerationMode.POSITIVE) for m, p in OPERATIONS[2:]),
    ],
)
def test_no_server_errors(api_schema: schemathesis.BaseSchema, method: str, path: str, mode: GenerationMode) -> None:
    operation = api_schema[path][method]
    seen: dict[int, int] = {}

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=MAX_EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
    def check(case: schemathesis.Case) -> None:  # type: ignore[type-arg]
        response = case.call(timeout=5)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])
        assert "Traceback" not in response.text

    check()
    assert sum(seen.values()) >= (10 if path == "/features" else 1), seen


IDS = st.one_of(
    st.sampled_from([f"u{i}" for i in range(5)] + [f"p{i}" for i in range(5)]),
    st.from_regex(r"[A-Za-z0-9_.:-]{1,128}", fullmatch=True),
    st.text(max_size=16),
)
FEATURES = st.lists(
    st.sampled_from(
        [
            "user_activity",
            "product_engagement",
            "user_activity:clicks_1h",
            "product_engagement:ctr_1h",
            "product_engagement:conversion_rate_7d",
        ]
    ),
    min_size=1,
    max_size=3,
)


def test_no_server_errors_with_valid_features(api_schema: schemathesis.BaseSchema) -> None:
    """Known feature references with stored, well-formed and arbitrary entity ids, so most requests reach
    Redis and the merge (schema-generated ids are nearly always malformed, hence 422)."""
    get_op, post_op = api_schema["/features"]["GET"], api_schema["/features"]["POST"]
    seen: dict[int, int] = {}

    @given(user=IDS, product=IDS, features=FEATURES, rows=st.lists(st.tuples(IDS, IDS), min_size=1, max_size=5))
    @settings(max_examples=MAX_EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), database=None)
    def check(user: str, product: str, features: list[str], rows: list[tuple[str, str]]) -> None:
        body: dict[str, Any] = {"entities": [{"user_id": u, "product_id": p} for u, p in rows], "features": features}
        cases = [
            get_op.Case(query={"features": ",".join(features), "user_id": user, "product_id": product}),
            post_op.Case(body=body, media_type="application/json"),
        ]
        for case in cases:
            response = case.call(timeout=5)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            assert response.status_code < 500, (case.as_curl_command(), response.status_code, response.text[:500])

    check()
    assert seen.get(200, 0) >= MAX_EXAMPLES // 4 and seen.get(422, 0) > 0, seen
