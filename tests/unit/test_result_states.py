"""celery_reliable.results swaps Celery's state sets everywhere Celery keeps a copy."""

from __future__ import annotations

import subprocess
import sys
import types

from celery import states

from celery_reliable.results import TERMINAL_STATES, stale_references


def test_our_terminal_states_are_celerys_ready_states() -> None:
    assert states.READY_STATES == TERMINAL_STATES
    assert {"CANCELLED", "DISCARDED"} <= states.READY_STATES
    assert "DISCARDED" in states.PROPAGATE_STATES and "DISCARDED" in states.EXCEPTION_STATES
    assert "CANCELLED" not in states.PROPAGATE_STATES
    assert "SNOOZED" not in states.READY_STATES, "a snoozed job runs again"


def test_copies_taken_before_the_import_are_swapped_too() -> None:
    """Celery's modules loaded first (as in a caller that imports its backends before
    the tasks): no class attribute, global or default argument keeps an old set."""
    script = (
        "import celery.result, celery.backends.base, celery.backends.redis, "
        "celery.backends.database, celery.backends.rpc, celery.backends.asynchronous\n"
        "assert 'DISCARDED' not in celery.backends.base.Backend.READY_STATES\n"
        "import celery_reliable\n"
        "from celery_reliable.results import stale_references\n"
        "from celery.backends.base import Backend\n"
        "from celery.backends.redis import RedisBackend\n"
        "assert list(stale_references()) == [], list(stale_references())\n"
        "assert 'DISCARDED' in Backend.READY_STATES and 'DISCARDED' in Backend.EXCEPTION_STATES\n"
        "assert 'DISCARDED' in RedisBackend.READY_STATES\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr


def test_stale_references_finds_an_old_set() -> None:
    """The check above can fail: a copy the swap did not reach is named."""
    probe = types.ModuleType("celery._reliable_probe")
    probe.READY = frozenset({states.SUCCESS, states.FAILURE, states.REVOKED})  # type: ignore[attr-defined]
    sys.modules[probe.__name__] = probe
    try:
        assert list(stale_references()) == ["celery._reliable_probe.READY"]
    finally:
        del sys.modules[probe.__name__]
