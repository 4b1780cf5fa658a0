"""Alert rules (infra/prometheus/alerts.yml): valid, unit-tested by promtool (each fires on a bad series and
stays quiet on a good one), each test able to fail, each alert linked to its runbook section."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
PROM = ROOT / "infra" / "prometheus"
RUNBOOK = ROOT / "docs" / "runbook.md"


def promtool(*args: str, cwd: Path = PROM) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("promtool")
    assert exe, "promtool is not installed (make setup installs prometheus with apt)"
    return subprocess.run([exe, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def alerts() -> list[dict[str, Any]]:
    return [r for g in yaml.safe_load((PROM / "alerts.yml").read_text())["groups"] for r in g["rules"]]


def test_rules_and_config_are_valid() -> None:
    res = promtool("check", "rules", "alerts.yml")
    assert res.returncode == 0 and "SUCCESS: 19 rules found" in res.stdout, res.stdout + res.stderr
    res = promtool("check", "config", "prometheus.yml")
    assert res.returncode == 0, res.stdout + res.stderr


TEST_FILES = ("alerts_test.yml", "alerts_test_daily.yml")


def test_promtool_unit_tests_pass() -> None:
    res = promtool("test", "rules", *TEST_FILES)
    assert res.returncode == 0 and res.stdout.count("SUCCESS") == 2, res.stdout + res.stderr


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    fires: set[str] = set()
    quiet: set[str] = set()
    for f in TEST_FILES:
        for t in yaml.safe_load((PROM / f).read_text())["tests"]:
            for case in t["alert_rule_test"]:
                (fires if case["exp_alerts"] else quiet).add(case["alertname"])
    names = {a["alert"] for a in alerts()}
    assert fires == names and quiet == names


@pytest.mark.parametrize(("broken", "kind"), [("vector(1) > 2", "never fires"), ("vector(1)", "always fires")])
def test_each_alert_test_can_fail(broken: str, kind: str, tmp_path: Path) -> None:
    """With every alert's expression replaced by one that never (always) fires, promtool reports a failed
    firing (quiet) case for every alert."""
    rules = yaml.safe_load((PROM / "alerts.yml").read_text())
    for g in rules["groups"]:
        for r in g["rules"]:
            r["expr"] = broken
    (tmp_path / "alerts.yml").write_text(yaml.safe_dump(rules))
    for f in TEST_FILES:
        shutil.copy(PROM / f, tmp_path / f)
    res = promtool("test", "rules", *TEST_FILES, cwd=tmp_path)
    out = res.stdout + res.stderr
    failed = set(re.findall(r"alertname: (\w+)", out))
    assert res.returncode != 0 and failed == {a["alert"] for a in alerts()}, (kind, out[-3000:])


def test_every_alert_links_to_its_runbook_section() -> None:
    anchors = {
        re.sub(r"[^a-z0-9 -]", "", h.strip().lower()).replace(" ", "-")
        for h in re.findall(r"^#+ (.+)$", RUNBOOK.read_text(), re.M)
    }
    for a in alerts():
        url = a["annotations"]["runbook_url"]
        assert url == f"docs/runbook.md#{a['alert'].lower()}" and url.partition("#")[2] in anchors, a["alert"]
        assert a["labels"]["severity"] in {"page", "ticket"} and a["annotations"]["summary"]
