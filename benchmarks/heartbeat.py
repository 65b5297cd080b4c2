"""What a heartbeat costs: per beat, and per execution of a task with a heartbeat.

    python -m benchmarks.heartbeat [--executions N] [--beats B] [--rounds R]

In one process, as a worker runs a task (``celery.app.trace.build_tracer``, with the
worker's beat board open, as the worker's bootstep opens it):

* ``µs per execution``: a no-op ReliableTask without and with ``heartbeat_timeout``
  (the execution pins its file on the board and takes it off: the per-execution cost);
* ``µs per beat``: ``self.heartbeat()`` called B times in one execution, with no key
  (one ``utime``) and with an idempotency key on SQLite (one lease renewal a second
  at most: the beats in between cost what the first variant costs);
* ``µs per store write``: one beat's transaction on SQLite, as a beat writes it at
  most once a second (the progress row, and the job's cancel read back with it).

Figures are the median of R rounds; JSON goes to stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import uuid
from collections.abc import Callable
from typing import Any

from celery import Celery
from celery.app.trace import build_tracer, setup_worker_optimizations
from rich.console import Console
from rich.table import Table

from benchmarks.observers import measure
from celery_reliable import ReliableTask
from celery_reliable.longrun import board
from celery_reliable.store import store_for
from celery_reliable.store.timeutil import utcnow


def make_app(database_url: str | None) -> Celery:
    app = Celery("bench-heartbeat", broker="memory://", set_as_current=False)
    app.conf.update(
        reliable_database_url=database_url, reliable_log_outcomes=False, reliable_sentry=False
    )
    return app


def tracer(app: Celery, name: str, beats: int, **options: Any) -> Callable[[], Any]:
    @app.task(base=ReliableTask, name=name, bind=True, ignore_result=True, shared=False, **options)
    def body(self: Any, n: int) -> int:
        for _ in range(beats):
            self.heartbeat()
        return n

    app.finalize()
    task = app.tasks[name]
    trace = build_tracer(task.name, task, app=app, hostname="bench@host")
    setup_worker_optimizations(app, "bench@host")

    def once() -> Any:
        task_id = str(uuid.uuid4())  # a new key per execution, for the keyed variant
        request = {
            "id": task_id,
            "task": task.name,
            "delivery_info": {"exchange": "", "routing_key": "celery", "priority": 0},
            "retries": 0,
        }
        return trace(task_id, (1,), {}, request)

    once()
    return once


def store_write(app: Celery) -> Callable[[], Any]:
    """One beat's store transaction (``store.progress.beat``), on a job not cancelled."""
    store = store_for(app)
    assert store is not None
    rows = store.progress
    task_id, started = str(uuid.uuid4()), utcnow()

    def once() -> Any:
        return rows.beat(task_id, "bench.beat", "bench@host", 1, started, 0.5, {"row": 1})

    return once


def median_us(once: Callable[[], Any], executions: int, rounds: int, per: int = 1) -> float:
    """µs per execution (``per``: per that many beats of one), as the observers
    benchmark measures it."""
    return measure(once, executions, rounds) / per


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--executions", type=int, default=5000)
    parser.add_argument("--beats", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    path = board.open_board()
    figures: dict[str, float] = {}
    try:
        plain = tracer(make_app(None), "bench.plain", 0)
        beating = tracer(make_app(None), "bench.beating", 0, heartbeat_timeout=30)
        figures["execution, no heartbeat"] = median_us(plain, args.executions, args.rounds)
        figures["execution, heartbeat_timeout"] = median_us(beating, args.executions, args.rounds)
        few = max(args.executions // 50, 10)
        unkeyed = tracer(make_app(None), "bench.beats", args.beats, heartbeat_timeout=30)
        empty = tracer(make_app(None), "bench.no_beats", 0, heartbeat_timeout=30)
        per_execution = median_us(empty, few, args.rounds)
        with_beats = median_us(unkeyed, few, args.rounds)
        figures["beat, no key"] = (with_beats - per_execution) / args.beats
        with tempfile.TemporaryDirectory() as tmp:
            store = f"sqlite:///{tmp}/store.db"
            keyed = tracer(
                make_app(store),
                "bench.keyed_beats",
                args.beats,
                heartbeat_timeout=30,
                idempotency_key=lambda n: uuid.uuid4().hex,
            )
            keyed_empty = tracer(
                make_app(store),
                "bench.keyed_no_beats",
                0,
                heartbeat_timeout=30,
                idempotency_key=lambda n: uuid.uuid4().hex,
            )
            figures["beat, keyed (SQLite)"] = (
                median_us(keyed, few, args.rounds) - median_us(keyed_empty, few, args.rounds)
            ) / args.beats
            figures["store write of a beat (SQLite)"] = median_us(
                store_write(make_app(store)), args.executions, args.rounds
            )
    finally:
        board.close_board(path)
    table = Table(title=f"heartbeat cost ({args.rounds} rounds)")
    table.add_column("what")
    table.add_column("µs", justify="right")
    for name, value in figures.items():
        table.add_row(name, f"{value:.2f}")
    ratio = figures["execution, no heartbeat"] / figures["execution, heartbeat_timeout"]
    table.add_row("throughput ratio, heartbeat_timeout / none", f"{ratio:.2f}")
    Console(stderr=True).print(table)
    print(json.dumps({k: round(v, 3) for k, v in figures.items()} | {"ratio": round(ratio, 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
