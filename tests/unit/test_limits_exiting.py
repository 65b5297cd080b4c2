"""What a process settles with the limits' backends when it exits (``limits/exiting.py``):
no Redis here, recorders in its place."""

from __future__ import annotations

import time

from celery import signals as celery_signals

from celery_reliable.limits import exiting


class Slow:
    def __init__(self, seconds: float, calls: list[tuple[float, float]]) -> None:
        self.seconds = seconds
        self.calls = calls

    def settle(self, timeout: float) -> bool:
        self.calls.append((time.monotonic(), timeout))
        time.sleep(min(self.seconds, timeout))
        return self.seconds <= timeout


def test_settle_all_shares_one_deadline() -> None:
    """Two seconds in all, however many backends: a process's exit is bounded."""
    calls: list[tuple[float, float]] = []
    slow, fast = Slow(0.2, calls), Slow(0.0, calls)
    exiting.register(slow)
    exiting.register(fast)
    began = time.monotonic()
    exiting.settle_all(timeout=0.3)
    assert time.monotonic() - began < 0.3 + 0.15
    assert len(calls) == 2
    for at, timeout in calls:  # each is given what is left of the 0.3 s
        assert abs((at - began) + timeout - 0.3) < 0.05, calls


def test_a_pool_child_settles_at_worker_process_shutdown() -> None:
    """billiard ends a pool child with os._exit, so atexit never runs there."""
    import celery_reliable  # noqa: F401  (connects the worker's receivers)
    from celery_reliable.worker.receivers import settle_limits_of_pool_child

    # Connected with weak=False: the receivers hold the function itself.
    receivers = [r[1] for r in celery_signals.worker_process_shutdown.receivers]
    assert settle_limits_of_pool_child in receivers
