"""What ReliableTask and its observers cost per execution, on the worker's own path.

    python -m benchmarks.observers [--executions N] [--rounds R]

Each variant builds the tracer a worker builds for a task (``celery.app.trace
.build_tracer``, once) and calls it N times, as the worker does for each message, with
a request like a worker's (delivery info, a publish-time header). The task body
returns at once, so what is measured is the machinery around it:

* ``celery Task``: a plain Celery task, the baseline;
* ``ReliableTask``: no observer at all (no log line, no StatsD, no Sentry, no store);
* ``+ log line (INFO on)``: the outcome log line, formatted and handed to a handler
  that drops it (``logging.NullHandler``), as with a worker logging at INFO;
* ``+ log line (WARNING)``: the same logger at WARNING (the line is not formatted);
* ``+ StatsD``: two UDP packets per execution, to a socket on loopback;
* ``+ Sentry``: an initialised sentry-sdk client (a success sends nothing);
* ``all on``: log line at INFO, StatsD and Sentry.

Figures are microseconds per execution: the median of R rounds (each the mean over N
executions), and the added cost over the baseline.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery, Task
from celery.app.trace import build_tracer, setup_worker_optimizations
from rich.console import Console
from rich.table import Table

from celery_reliable import ReliableTask


def make_app(name: str, **conf: Any) -> Celery:
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.update(
        {
            "reliable_database_url": None,
            "reliable_log_outcomes": False,
            "reliable_sentry": False,
            **conf,
        }
    )
    return app


def tracer_for(app: Celery, base: type[Task]) -> Callable[[], Any]:
    @app.task(base=base, name="bench.noop", ignore_result=True, shared=False)
    def noop(x: int) -> int:
        return x

    app.finalize()
    task = app.tasks["bench.noop"]
    trace = build_tracer(task.name, task, app=app, hostname="bench@host")
    request = {
        "id": str(uuid.uuid4()),
        "task": task.name,
        "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0},
        "reliable_sent_at": time.time(),
        "retries": 0,
    }

    def once() -> Any:
        return trace(request["id"], (1,), {}, request)

    once()  # builds the observers on the first execution
    return once


def measure(once: Callable[[], Any], executions: int, rounds: int) -> float:
    for _ in range(min(executions, 2000)):
        once()
    results = []
    for _ in range(rounds):
        gc.collect()
        start = time.perf_counter_ns()
        for _ in range(executions):
            once()
        results.append((time.perf_counter_ns() - start) / executions / 1000.0)
    return statistics.median(results)


VARIANTS = [
    "celery Task",
    "ReliableTask",
    "+ log line (INFO on)",
    "+ log line (WARNING)",
    "+ StatsD",
    "+ Sentry",
    "all on",
]


def run_variant(name: str, executions: int, rounds: int) -> float:
    """One variant, alone in this process: no other app's observers are connected."""
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    statsd = {"reliable_statsd_host": "127.0.0.1", "reliable_statsd_port": sink.getsockname()[1]}
    outcome_log = logging.getLogger("celery_reliable.outcome")
    outcome_log.propagate = False
    outcome_log.addHandler(logging.NullHandler())
    outcome_log.setLevel(logging.WARNING if name.endswith("(WARNING)") else logging.INFO)
    if name in ("+ Sentry", "all on"):
        import sentry_sdk

        sentry_sdk.init(dsn="http://public@127.0.0.1:9/1", auto_enabling_integrations=False)
    conf: dict[str, Any] = {
        "celery Task": {},
        "ReliableTask": {},
        "+ log line (INFO on)": {"reliable_log_outcomes": True},
        "+ log line (WARNING)": {"reliable_log_outcomes": True},
        "+ StatsD": statsd,
        "+ Sentry": {"reliable_sentry": True},
        "all on": {"reliable_log_outcomes": True, "reliable_sentry": True, **statsd},
    }[name]
    app = make_app("bench", **conf)
    once = tracer_for(app, Task if name == "celery Task" else ReliableTask)
    # What a worker process does at start: among others, Task.__call__ no longer pushes
    # a second request for tasks that override __call__.
    setup_worker_optimizations(app, "bench@host")
    try:
        return measure(once, executions, rounds)
    finally:
        sink.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.executions, args.rounds)))
        return 0

    figures: dict[str, float] = {}
    for name in VARIANTS:
        out = subprocess.run(
            [
                sys.executable,
                "-m",
                "benchmarks.observers",
                "--variant",
                name,
                "--executions",
                str(args.executions),
                "--rounds",
                str(args.rounds),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        figures[name] = json.loads(out.stdout.strip().splitlines()[-1])

    baseline = figures["celery Task"]
    table = Table(title=f"µs per execution ({args.executions} executions x {args.rounds} rounds)")
    for column in ("variant", "µs / execution", "added over celery Task"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for name, value in figures.items():
        added = "-" if name == "celery Task" else f"{value - baseline:+.1f}"
        table.add_row(name, f"{value:.1f}", added)
    Console(stderr=True).print(table)
    print(json.dumps({name: round(value, 2) for name, value in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
