"""``celery -A APP reliable ...`` as a user runs it: a real process, its output read
whole (piped, so listings are tab-separated lines)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.support.workers import ROOT


def run_reliable(
    app: str, env: dict[str, str], *args: str, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``celery -A app reliable *args`` with the test's servers in ``env``;
    ``answer`` is typed at a confirmation prompt."""
    return subprocess.run(
        [sys.executable, "-m", "celery", "-A", app, "reliable", *args],
        check=False,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        input=answer,
        timeout=60,
    )


def cli_app(
    broker: str, store: str, *args: str, answer: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``reliable *args`` on the CLI tests' helper app (``apps/cli.py``)."""
    env = {"RELIABLE_TEST_BROKER": broker, "RELIABLE_TEST_STORE": store, "COLUMNS": "200"}
    return run_reliable("tests.support.apps.cli", env, *args, answer=answer)
