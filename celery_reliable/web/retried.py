"""What became of the jobs that retrying dead letters published: the dead letter a job
ended in when it failed again (the store finds it by task id), else its state in the
result backend, the only record of a job that did not fail."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass

import anyio
from celery import states
from celery.backends.base import DisabledBackend
from starlette.requests import Request

from celery_reliable.outcomes import CANCELLED_STATE, DISCARDED_STATE, SNOOZED_STATE
from celery_reliable.store.dead_letters import DeadLetter, DeadLetters
from celery_reliable.web.common import celery_app, store

logger = logging.getLogger("celery_reliable.web")

#: Longest wait for the result backend before a page is shown without what it knows.
BACKEND_TIMEOUT = 2.0

#: A result backend state as shown: (word, the CSS class of its badge).
STATES = {
    states.SUCCESS: ("succeeded", "succeeded"),
    states.FAILURE: ("failed", "failed"),
    DISCARDED_STATE: ("discarded", "discarded"),
    CANCELLED_STATE: ("cancelled", "cancelled"),
    states.REVOKED: ("revoked", "cancelled"),
    states.RETRY: ("retrying", "retried"),
    SNOOZED_STATE: ("snoozed", "snoozed"),
    states.STARTED: ("running", "running"),
    # Celery says PENDING of a task id it knows nothing about, too (not run yet, or
    # its result expired): the word says both.
    states.PENDING: ("pending or unknown", "pending"),
}


@dataclass(frozen=True)
class Fate:
    """What became of one retried job."""

    #: An outcome ("discarded", "succeeded") or what is known ("running", "not known").
    label: str
    #: The CSS class of the label's badge.
    css: str
    #: The job's own dead letter, when it failed again.
    dead_letter: int | None = None
    #: Where the label comes from, said beside it when it is not a dead letter.
    source: str = ""


async def fates(request: Request, letters: Iterable[DeadLetter]) -> dict[str, Fate]:
    """``retried task id -> Fate`` for the retried ones among ``letters``."""
    task_ids = sorted({d.retried_task_id for d in letters if d.retried_task_id})
    if not task_ids:
        return {}
    dead_letters: DeadLetters = store(request).dead_letters
    again = await anyio.to_thread.run_sync(dead_letters.of_task_ids, task_ids)
    found = {
        task_id: Fate(letter.outcome, letter.outcome, dead_letter=letter.id)
        for task_id, letter in again.items()
    }
    rest = [task_id for task_id in task_ids if task_id not in found]
    if rest:
        found.update(await backend_fates(request, rest))
    return found


async def backend_fates(request: Request, task_ids: list[str]) -> dict[str, Fate]:
    """``task id -> Fate`` read from the result backend, one read at a time and within
    :data:`BACKEND_TIMEOUT` (else each is "not known", with why)."""
    app = celery_app(request)
    if isinstance(app.backend, DisabledBackend):
        unknown = Fate("not known", "", source="no result backend is configured")
        return dict.fromkeys(task_ids, unknown)
    reading: threading.Lock = request.app.state.backend_read
    # One read at a time: a backend that never answers holds one thread, not one per
    # page load.
    if not reading.acquire(blocking=False):
        busy = Fate("not known", "", source="the result backend has not answered yet")
        return dict.fromkeys(task_ids, busy)

    def read() -> dict[str, str]:
        try:
            return {task_id: str(app.backend.get_state(task_id)) for task_id in task_ids}
        finally:
            reading.release()

    try:
        with anyio.fail_after(BACKEND_TIMEOUT):
            found = await anyio.to_thread.run_sync(read, abandon_on_cancel=True)
    except TimeoutError:
        why = f"the result backend did not answer within {BACKEND_TIMEOUT:g} s"
        return dict.fromkeys(task_ids, Fate("not known", "", source=why))
    except Exception as exc:  # a backend down must not take the page with it
        logger.warning("result backend not read: %s", exc)
        why = f"the result backend could not be read: {exc}"
        return dict.fromkeys(task_ids, Fate("not known", "", source=why))
    return {task_id: _fate(state) for task_id, state in found.items()}


def _fate(state: str) -> Fate:
    label, css = STATES.get(state, (state.lower(), ""))
    return Fate(label, css, source="result backend")
