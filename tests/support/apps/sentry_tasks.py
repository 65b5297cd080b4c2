"""The tasks of the Sentry tests, one per outcome, and the events each must produce."""

from __future__ import annotations

from typing import Any

from celery_reliable import Cancel, ReliableTask, Snooze, discard_on, retry_on
from celery_reliable.backoff import fixed


class Flaky(Exception):
    pass


class Invalid(Exception):
    pass


def define(app: Any, prefix: str) -> dict[str, Any]:
    def task(name: str, **options: Any) -> Any:
        return app.task(base=ReliableTask, shared=False, name=f"{prefix}.{name}", **options)

    @task("ok")
    def ok() -> str:
        return "ok"

    @task("retries_quietly")
    @retry_on(Flaky, wait=fixed(0.05), attempts=2)
    def retries_quietly() -> None:
        raise Flaky("down")

    @task("retries_loudly")
    @retry_on(Flaky, wait=fixed(0.05), attempts=2, report=True)
    def retries_loudly() -> None:
        raise Flaky("down, and tell me")

    @task("fails")
    def fails() -> None:
        raise ZeroDivisionError("a bug")

    @task("discards_quietly")
    @discard_on(Invalid)
    def discards_quietly() -> None:
        raise Invalid("bad input")

    @task("discards_loudly")
    @discard_on(Invalid, report=True)
    def discards_loudly() -> None:
        raise Invalid("bad input, and tell me")

    @task("cancels")
    def cancels() -> Any:
        return Cancel("nothing to do")

    @task("snoozes", bind=True)
    def snoozes(self: ReliableTask, key: str) -> Any:
        # Snooze on the first run only. Decided from the message (no snooze recorded in
        # its header yet), not a counter: under prefork the next run may be in another
        # process.
        snoozed = ((self.request.headers or {}).get("reliable") or {}).get("snoozes", 0)
        return "later" if snoozed else Snooze(0.05)

    @task("charges", timeout=10, idempotency_key="{order}")
    def charges(order: str) -> str:
        return order

    return {n: t for n, t in locals().items() if hasattr(t, "apply_async")}
