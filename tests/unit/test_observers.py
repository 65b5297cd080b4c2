"""Observers: every one connected hears the outcomes of its own app's tasks.

Celery before 5.7 identified a bound-method receiver by its function alone, so a
second observer (or the same observer class on a second app) was silently not
connected: dead letters, metrics and Sentry reports went missing while the log line
still appeared. ``make compat`` runs this on Celery 5.4 to 5.7.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from celery_reliable import Outcome, ReliableTask
from celery_reliable.observers.base import Observer
from celery_reliable.signals import OutcomeEvent, execution_started


class Recording(Observer):
    name = "recording"

    def __init__(self, app: Celery) -> None:
        super().__init__(app)
        self.outcomes: list[Any] = []
        self.starts: list[Any] = []

    def on_started(self, task: Any, **fields: Any) -> None:
        self.starts.append(fields["task_id"])

    def on_outcome(self, event: OutcomeEvent) -> None:
        self.outcomes.append(event.outcome)


class OtherRecording(Recording):
    name = "other"


def make_task(name: str) -> Any:
    app = Celery(name, broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = None

    @app.task(base=ReliableTask, name=f"{name}.noop", shared=False)
    def noop() -> None:
        return None

    assert noop.name
    return app, noop


def send(task: Any, task_id: str) -> None:
    execution_started.send(sender=task, task_id=task_id, attempt=1, request=None, queue=None)
    OutcomeEvent(
        task=task,
        task_id=task_id,
        outcome=Outcome.SUCCEEDED,
        attempt=1,
        exc=None,
        reason="",
        duration=0.0,
        retry_in=None,
        report=False,
        queue=None,
        request=None,
    ).send()


def test_every_observer_hears_its_apps_outcomes() -> None:
    app_a, task_a = make_task("obs_a")
    app_b, task_b = make_task("obs_b")
    observers = [Recording(app_a), OtherRecording(app_a), Recording(app_b)]
    for observer in observers:
        observer.connect()
    send(task_a, "a-1")
    send(task_b, "b-1")
    first, other, second_app = observers
    assert first.outcomes == [Outcome.SUCCEEDED] and first.starts == ["a-1"]
    assert other.outcomes == [Outcome.SUCCEEDED] and other.starts == ["a-1"]
    assert second_app.outcomes == [Outcome.SUCCEEDED] and second_app.starts == ["b-1"]


def test_an_observer_that_is_gone_is_disconnected() -> None:
    app, task = make_task("obs_gone")
    gone = Recording(app)
    gone.connect()
    del gone  # weakly connected: the app's observers keep theirs alive, not the signal
    kept = Recording(app)
    kept.connect()
    send(task, "g-1")
    assert kept.outcomes == [Outcome.SUCCEEDED]
