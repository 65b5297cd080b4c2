"""``capture_outcomes()``: the outcomes of a block, in order, and nothing after it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from celery_reliable import Cancel, Outcome, ReliableTask
from celery_reliable.signals import OutcomeEvent, task_outcome
from celery_reliable.testing import capture_outcomes, perform_task


@pytest.fixture
def app() -> Iterator[Celery]:
    app = Celery("capture", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = None
    yield app
    app.close()


def tasks(app: Celery) -> tuple[Any, Any]:
    @app.task(base=ReliableTask, name="capture.ok", shared=False)
    def ok(n: int) -> int:
        return n

    @app.task(base=ReliableTask, name="capture.cancel", shared=False)
    def cancel() -> Any:
        return Cancel("nothing to do")

    return ok, cancel


def test_the_events_of_the_block_in_order(app: Celery) -> None:
    ok, cancel = tasks(app)
    with capture_outcomes() as seen:
        perform_task(ok, args=(1,))
        cancel.apply()
        ok.apply((2,))
    assert [(e.task_name, e.outcome) for e in seen] == [
        ("capture.ok", Outcome.SUCCEEDED),
        ("capture.cancel", Outcome.CANCELLED),
        ("capture.ok", Outcome.SUCCEEDED),
    ]
    assert all(isinstance(e, OutcomeEvent) for e in seen)
    assert seen[1].reason == "nothing to do" and seen[1].attempt == 1
    with pytest.raises(AttributeError):
        seen[0].outcom  # type: ignore[attr-defined]  # noqa: B018 - a typo fails


def test_nothing_is_heard_after_the_block_even_when_it_raised(app: Celery) -> None:
    ok, _ = tasks(app)
    with pytest.raises(RuntimeError), capture_outcomes() as seen:
        ok.apply((1,))
        raise RuntimeError("the test failed here")
    assert not [key for key, _ in task_outcome.receivers if "capture_outcomes" in str(key[0])]
    ok.apply((2,))
    assert [e.outcome for e in seen] == [Outcome.SUCCEEDED]


def test_receivers_written_against_keywords_still_get_them(app: Celery) -> None:
    """The signal's keyword arguments, from before the event existed, are kept."""
    ok, _ = tasks(app)
    heard: list[dict[str, Any]] = []

    def old_style(sender: Any = None, **fields: Any) -> None:
        heard.append(fields)

    task_outcome.connect(old_style, weak=False)
    try:
        with capture_outcomes() as seen:
            ok.apply((3,))
    finally:
        task_outcome.disconnect(old_style)
    (fields,) = heard
    (event,) = seen
    assert fields["event"] is event
    for name in ("task_id", "outcome", "attempt", "exc", "reason", "duration"):
        assert fields[name] == getattr(event, name), name
    for name in ("retry_in", "report", "queue", "request"):
        assert fields[name] is getattr(event, name), name
