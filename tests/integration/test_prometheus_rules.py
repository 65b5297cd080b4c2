"""The Prometheus alert rules, checked and unit-tested by Prometheus's own
``promtool`` (Debian's ``prometheus`` package; `make test` installs it): the series
and expected alerts are in docs/grafana/prometheus-alerts.test.yml."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

GRAFANA = Path(__file__).resolve().parents[2] / "docs" / "grafana"


def promtool(*args: str) -> subprocess.CompletedProcess[str]:
    binary = shutil.which("promtool")
    assert binary, "promtool is missing: apt-get install prometheus (make test does)"
    return subprocess.run(
        [binary, *args], check=False, cwd=GRAFANA, capture_output=True, text=True, timeout=120
    )


def test_the_alert_rules_are_valid() -> None:
    done = promtool("check", "rules", "prometheus-alerts.yml")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS: 4 rules found" in done.stdout


def test_each_alert_fires_where_it_should_and_only_there() -> None:
    done = promtool("test", "rules", "prometheus-alerts.test.yml")
    assert done.returncode == 0, done.stdout + done.stderr
