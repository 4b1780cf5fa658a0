"""``make demo`` must not talk to another program in its online API's place (a taken port 8000)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from examples.demo.walkthrough import HOST, api_port, wait_http

pytestmark = pytest.mark.unit


def test_the_api_port_is_the_preferred_one_when_free_and_another_when_taken(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind((HOST, 0))
        taken.listen()
        busy = taken.getsockname()[1]
        other = api_port(None, preferred=busy)
        assert other != busy
        assert f"port {busy} is taken; the online API uses port {other}" in capsys.readouterr().out
        assert api_port(busy, preferred=busy) == busy  # asked for explicitly: as asked (serve then says why not)
    assert api_port(None, preferred=busy) == busy  # free again


def test_waiting_for_the_api_stops_when_its_process_has_exited() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(SystemExit, match="exited with status 3"):
        wait_http(f"http://{HOST}:9/health", proc, timeout=30)
