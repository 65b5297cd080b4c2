"""Smoke test of a plain install: ``pip install celery-reliable`` with no extras.

    python -m tests.compat.plain_install

Run by ``make test`` in ``.venv-plain``, a venv with the package and nothing else (no
pytest either, hence a script). It checks that:

1. no optional library is installed, so the test means what it says;
2. a real ``celery worker`` process (prefork, one child) starts on embedded defaults
   and every outcome is reached, seen on the StatsD wire (a real UDP socket);
3. a configured feature whose library is missing stops the worker at start with one
   line naming the extra to install.

Exits 0 when all hold, else prints what failed and exits 1.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

#: The worker runs here: a folder with only ``tests/`` in it (``make plain-install``),
#: so that ``celery_reliable`` is the installed wheel, not the source tree.
ROOT = Path.cwd()
OPTIONAL = {
    "sentry_sdk": "sentry",
    "psycopg": "postgres",
    "redis": "redis",
    "django": "django",
    "starlette": "web",
}
OUTCOMES = (
    "succeeded",
    "duplicate",
    "retried",
    "snoozed",
    "cancelled",
    "discarded",
    "exhausted",
    "failed",
)
SCENARIOS = ("ok", "flaky", "busy", "gone", "refunded", "invalid", "down", "bug")

failures: list[str] = []


def check(condition: bool, what: str) -> None:
    print(f"  {'ok  ' if condition else 'FAIL'} {what}")
    if not condition:
        failures.append(what)


def worker_command() -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "tests.compat.plain_app",
        "worker",
        "--pool",
        "prefork",
        "--concurrency",
        "1",
        "--loglevel",
        "WARNING",
        "--without-heartbeat",
        "--without-gossip",
        "--without-mingle",
    ]


def every_outcome(data: str) -> None:
    print("a real worker reaches every outcome, with no extras installed:")
    wire = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    wire.bind(("127.0.0.1", 0))
    wire.settimeout(0.2)
    env = {**os.environ, "PLAIN_DIR": data, "PLAIN_STATSD_PORT": str(wire.getsockname()[1])}
    os.environ.update(env)  # the same settings for the app in this process
    from celery_reliable.results import wait_for_outcome
    from tests.compat import plain_app

    plain_app.app.conf.reliable_statsd_host = None  # only the worker sends metrics
    log = open(Path(data) / "worker.log", "w+")  # noqa: SIM115 - read back on failure
    worker = subprocess.Popen(
        worker_command(), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT
    )
    seen: Counter[str] = Counter()
    try:
        results = [plain_app.scenario.delay(name) for name in SCENARIOS]
        first = plain_app.charge.delay(7)
        wait_for_outcome(first, timeout=60)
        results += [first, plain_app.charge.delay(7)]
        states = [wait_for_outcome(result, timeout=60) for result in results]
        check(True, f"{len(states)} jobs ended: {', '.join(sorted(set(states)))}")
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not all(seen[o] for o in OUTCOMES):
            try:
                packet = wire.recv(65535).decode()
            except TimeoutError:
                continue
            for line in packet.splitlines():
                name = line.split(":", 1)[0]
                seen[name.rsplit(".", 1)[-1]] += 1
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(30)
        except subprocess.TimeoutExpired:
            worker.kill()
            failures.append("the worker did not stop within 30 s of SIGTERM")
        wire.close()
    for outcome in OUTCOMES:
        check(seen[outcome] > 0, f"outcome {outcome} (StatsD counter seen {seen[outcome]}x)")
    check(worker.returncode == 0, f"the worker stopped cleanly (exit {worker.returncode})")
    log.seek(0)
    if failures:
        print("the worker's output, last 3000 characters:", log.read()[-3000:], sep="\n")
    log.close()


def refuses_to_start(data: str, setting: str, env: dict[str, str], wanted: str) -> None:
    folder = Path(data) / f"refusal-{len(list(Path(data).glob('refusal-*')))}"
    folder.mkdir()
    run = subprocess.run(
        worker_command(),
        cwd=ROOT,
        env={**os.environ, "PLAIN_DIR": str(folder), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = run.stdout + run.stderr
    lines = [line for line in output.splitlines() if wanted in line]
    check(
        run.returncode == 1 and bool(lines) and "Traceback" not in output,
        f"{setting}: the worker exits ({run.returncode}) with one line: "
        f"{lines[0].strip() if lines else 'nothing about ' + repr(wanted)}",
    )
    if not lines or "Traceback" in output:
        print(output[-3000:])


def web_without_extra(data: str) -> None:
    """``reliable web`` without the web extra: one line naming it, no traceback."""
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "tests.compat.plain_app", "reliable", "web"],
        cwd=ROOT,
        env={**os.environ, "PLAIN_DIR": data},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = (run.stdout + run.stderr).strip()
    check(
        run.returncode == 1
        and "pip install 'celery-reliable[web]'" in output
        and len(output.splitlines()) == 1,
        f"reliable web without the web extra exits ({run.returncode}) with one line: {output}",
    )


def main() -> int:
    print("no optional library is installed:")
    for module, extra in OPTIONAL.items():
        check(importlib.util.find_spec(module) is None, f"{module} ({extra} extra) is absent")
    check(importlib.util.find_spec("statsd") is not None, "statsd (a core dependency) is present")
    import celery

    import celery_reliable

    where = Path(celery_reliable.__file__).resolve()
    check(
        "site-packages" in where.parts,
        f"celery_reliable is the installed package ({where.parent}), on Celery "
        f"{celery.__version__}",
    )
    with tempfile.TemporaryDirectory(prefix="reliable-plain-") as data:
        every_outcome(data)
        print("a setting that cannot work stops the worker at start, with one line:")
        refuses_to_start(
            data,
            "reliable_database_url=postgresql://... without the postgres extra",
            {"PLAIN_DATABASE_URL": "postgresql://reliable@127.0.0.1:9/reliable"},
            "pip install 'celery-reliable[postgres]'",
        )
        refuses_to_start(
            data,
            "reliable_sentry=True without the sentry extra",
            {"PLAIN_SENTRY": "1"},
            "pip install 'celery-reliable[sentry]'",
        )
        refuses_to_start(
            data,
            "reliable_database_url=mysql://...",
            {"PLAIN_DATABASE_URL": "mysql://reliable@127.0.0.1:9/reliable"},
            "celery_reliable stores to SQLite or PostgreSQL, not mysql",
        )
        web_without_extra(data)
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("plain install: every check passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
