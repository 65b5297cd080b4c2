"""The gates: ``celery reliable check`` as a table, waivers and reasons included."""

from __future__ import annotations

import anyio
from starlette.requests import Request
from starlette.responses import Response

from celery_reliable.audit import gates
from celery_reliable.options import GATES
from celery_reliable.web.common import celery_app, render


async def gates_page(request: Request) -> Response:
    app = celery_app(request)
    findings = await anyio.to_thread.run_sync(gates.check, app)
    # A fact of the app (no StatsD) is one note, not one per task, as in `check`.
    notes = [
        (gates.PROJECT, result)
        for result in findings.project
        if result.status is not gates.Status.PASS
    ] + [
        (audit.task, result)
        for audit in findings.tasks
        for result in audit.own
        if result.status is not gates.Status.PASS
    ]
    return render(
        request,
        "gates.html",
        page="gates",
        findings=findings,
        gate_names=GATES,
        notes=notes,
        format_seconds=gates.format_seconds,
    )
