"""What the outcome history costs per execution.

    python -m benchmarks.history [--executions N] [--rounds R]

Three figures, in microseconds per execution:

* ``receiver``: the history's ``task_outcome`` receiver called as the signal calls it
  (every keyword of the signal), minus an empty receiver with the same signature:
  what an execution pays on its own thread. The target is under 1 µs.
* ``aggregation``: what the background writer spends per execution summing the
  recorded tuples into per-minute rows (off the execution's path; same process).
* ``end to end``: a worker's tracer running a no-op ReliableTask with a SQLite store,
  history on minus history off (``reliable_history=False``), the background writes
  included; the variants run alternately, each in its own process, R rounds each.
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from celery.app.trace import setup_worker_optimizations
from rich.console import Console
from rich.table import Table

from benchmarks.observers import make_app, measure, tracer_for
from celery_reliable import Outcome, ReliableTask
from celery_reliable.store.history import HistoryKey, MinuteCounts, aggregate
from celery_reliable.wiring import activate_history


def _signal_fields() -> dict[str, Any]:
    return {
        "signal": None,
        "task_id": "3f1c6f0e-0000-0000-0000-000000000000",
        "outcome": Outcome.SUCCEEDED,
        "attempt": 1,
        "exc": None,
        "reason": "",
        "duration": 0.0042,
        "retry_in": None,
        "report": False,
        "queue": "celery",
        "request": None,
    }


def receiver_cost(executions: int, rounds: int) -> dict[str, float]:
    from celery_reliable.observers.history import HistoryObserver

    folder = tempfile.mkdtemp()
    app = make_app("bench-history", reliable_database_url=f"sqlite:///{folder}/store.sqlite3")
    tracer_for(app, ReliableTask)
    task = app.tasks["bench.noop"]
    # A long interval: the background writer stays out of this measurement.
    observer = HistoryObserver(app, interval=3600.0)
    observer.activate()  # as a worker's start does
    fields = _signal_fields()

    def empty(sender: Any = None, **_: Any) -> None:
        return None

    def timed(receiver: Any) -> float:
        results = []
        for _ in range(rounds):
            gc.collect()
            start = time.perf_counter_ns()
            for _ in range(executions):
                receiver(sender=task, **fields)
            results.append((time.perf_counter_ns() - start) / executions / 1000.0)
            observer._events.clear()
        return statistics.median(results)

    timed(observer._outcome)  # warm-up, starts the writer thread
    recorded = timed(observer._outcome)
    baseline = timed(empty)

    events = [(time.time(), task.name, "celery", "succeeded", 0.0042)] * executions
    results = []
    for _ in range(rounds):
        into: dict[HistoryKey, MinuteCounts] = {}
        start = time.perf_counter_ns()
        aggregate(events, into)
        results.append((time.perf_counter_ns() - start) / executions / 1000.0)
    observer.stop()
    return {
        "receiver": recorded - baseline,
        "receiver_total": recorded,
        "empty_receiver": baseline,
        "aggregation": statistics.median(results),
    }


def run_variant(history: bool, executions: int, rounds: int) -> float:
    folder = Path(tempfile.mkdtemp())
    app = make_app(
        "bench",
        reliable_database_url=f"sqlite:///{folder}/store.sqlite3",
        reliable_history=history,
        reliable_history_interval=1.0,
    )
    once = tracer_for(app, ReliableTask)
    activate_history(app)  # as a worker's start does
    setup_worker_optimizations(app, "bench@host")
    return measure(once, executions, rounds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--variant", choices=["on", "off"], help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.variant:
        value = run_variant(args.variant == "on", args.executions, 3)
        print(json.dumps(value))
        return 0

    figures = receiver_cost(args.executions, args.rounds)
    runs: dict[str, list[float]] = {"on": [], "off": []}
    for _ in range(args.rounds):
        for variant in ("off", "on"):
            out = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.history",
                    "--variant",
                    variant,
                    "--executions",
                    str(args.executions // 5),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            runs[variant].append(json.loads(out.stdout.strip().splitlines()[-1]))
    on, off = statistics.median(runs["on"]), statistics.median(runs["off"])
    figures.update({"tracer_history_off": off, "tracer_history_on": on, "end_to_end": on - off})

    table = Table(title="outcome history: µs per execution")
    table.add_column("what")
    table.add_column("µs", justify="right")
    table.add_row("receiver (the execution's own cost)", f"{figures['receiver']:.3f}")
    table.add_row(
        "  receiver as called / empty receiver",
        f"{figures['receiver_total']:.3f} / {figures['empty_receiver']:.3f}",
    )
    table.add_row("aggregation (background writer)", f"{figures['aggregation']:.3f}")
    table.add_row("tracer, history off (SQLite store)", f"{off:.2f}")
    table.add_row("tracer, history on", f"{on:.2f}")
    table.add_row("end to end, on - off", f"{on - off:+.2f}")
    Console(stderr=True).print(table)
    print(json.dumps({key: round(value, 3) for key, value in figures.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
