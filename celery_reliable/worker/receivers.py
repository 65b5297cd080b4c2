"""The receivers of Celery's worker signals: what a worker process does at its start,
in its pool children and at its end, beside the bootstep.

Connected once per process by ``celery_reliable/__init__.py`` (so also for an app
whose tasks declare rules without any ReliableTask, which ``worker_init`` refuses).
Each receiver returns at once in a process that is not a worker; importing this
module imports no store library (a web process that only publishes stays light).
"""

from __future__ import annotations

from typing import Any

from celery import signals as celery_signals
from celery.exceptions import ImproperlyConfigured, TimeLimitExceeded, WorkerLostError

from celery_reliable import wiring
from celery_reliable.batches.counter import DRAIN_AT_SHUTDOWN, stop_endings_counter
from celery_reliable.delivery.redelivery import stop_redelivery
from celery_reliable.limits import exiting
from celery_reliable.longrun.interrupt import install_handler
from celery_reliable.longrun.monitor import stop_monitor
from celery_reliable.policy import RULES_ATTR
from celery_reliable.task import ReliableTask
from celery_reliable.worker.external_failures import report_external_failure
from celery_reliable.worker.misconfigured import WorkerMisconfigured


def declarations_without_reliable_task(app: Any) -> list[str]:
    """Tasks with ``retry_on`` / ``discard_on`` / ``cancel_on`` on their function whose
    class is not a ReliableTask: there the declarations would silently do nothing."""
    return sorted(
        name
        for name, task in app.tasks.items()
        if not isinstance(task, ReliableTask) and getattr(task.run, RULES_ATTR, None)
    )


def refuse_ignored_declarations(sender: Any = None, **_: Any) -> None:
    """``worker_init``: stop a worker whose tasks declare rules that cannot apply."""
    app = getattr(sender, "app", None)
    if app is None:
        return
    ignored = declarations_without_reliable_task(app)
    if ignored:
        # SystemExit, not an exception: Celery's signal dispatch logs and swallows those.
        raise WorkerMisconfigured(
            ImproperlyConfigured(
                f"tasks {ignored} declare retry_on/discard_on/cancel_on but are not "
                "ReliableTasks, so the declarations would do nothing: add "
                "base=ReliableTask to their @app.task"
            )
        )
    limited = sorted(
        name
        for name, task in app.tasks.items()
        if isinstance(task, ReliableTask) and task._reliable_limits is not None
    )
    if limited:
        from celery_reliable.limits.slots import limits_url

        try:
            limits_url(app)
        except ImproperlyConfigured as exc:
            # At start, not at each execution: every limited job would end FAILED.
            raise WorkerMisconfigured(ImproperlyConfigured(f"tasks {limited}: {exc}")) from exc


def report_ended_outside_the_body(
    sender: Any = None,
    exception: BaseException | None = None,
    task_id: str | None = None,
    args: Any = None,
    kwargs: Any = None,
    **_: Any,
) -> None:
    """``task_failure`` for executions that end outside the task body: the hard time
    limit, a lost worker. The worker's main process reports these; the body never saw
    them, so no outcome was sent for them yet."""
    if not isinstance(sender, ReliableTask):
        return
    if not isinstance(exception, (TimeLimitExceeded, WorkerLostError)):
        return
    wiring.observers_for(sender.app)
    report_external_failure(sender, task_id, exception, args, kwargs)


def at_pool_child_start(**_: Any) -> None:
    """``worker_process_init``: a prefork child records the history of what it runs,
    and a silent body in it can be ended (``longrun/interrupt.py``)."""
    wiring.activate_history_everywhere()
    install_handler()


def settle_limits_of_pool_child(**_: Any) -> None:
    """``worker_process_shutdown``: a prefork child exits, by ``os._exit`` (so its
    ``atexit`` never runs): the answers to its last give backs are read first, for two
    seconds at most (``limits/exiting.py``)."""
    exiting.settle_all()


def write_history_of_pool_child(**_: Any) -> None:
    """``worker_process_shutdown``: a prefork child exits; what it counted is written."""
    wiring.flush_history_everywhere()


def at_worker_shutdown(sender: Any = None, **_: Any) -> None:
    """``worker_shutdown`` (a warm shutdown, sent once the pool has finished; sender: the
    worker): the executions of a thread pool that ended during the shutdown are written
    too, the batch endings of the last members counted, and this worker's messages are
    no longer kept alive."""
    if sender is None:
        return
    app = getattr(sender, "app", None)
    if app is not None:
        wiring.flush_history(app)
    stop_endings_counter(sender, drain=DRAIN_AT_SHUTDOWN)
    stop_redelivery(sender)
    stop_monitor(sender)


celery_signals.worker_init.connect(refuse_ignored_declarations, weak=False)
celery_signals.task_failure.connect(report_ended_outside_the_body, weak=False)
celery_signals.worker_process_init.connect(at_pool_child_start, weak=False)
celery_signals.worker_process_shutdown.connect(settle_limits_of_pool_child, weak=False)
celery_signals.worker_process_shutdown.connect(write_history_of_pool_child, weak=False)
celery_signals.worker_shutdown.connect(at_worker_shutdown, weak=False)
