"""``celery -A proj reliable check``: every ReliableTask against the production gates.

Exit status 0 when every task meets every gate it does not waive, 1 otherwise, so a CI
step fails on a task that would ship without a timeout or with unbounded retries. A fact
of the whole app (no StatsD, Sentry not set up) is one ``(project)`` line, not one per
task. Queues and tasks paused in the store (``celery reliable pause``) are mentioned, one
line each: not a gate, they never fail the check.
"""

from __future__ import annotations

import json
import sys

import click
from celery.exceptions import ImproperlyConfigured
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from celery_reliable.audit.gates import (
    PROJECT,
    PROJECT_GATES,
    Findings,
    GateResult,
    Status,
    check,
    format_seconds,
)
from celery_reliable.cli.common import one_line, when
from celery_reliable.errors import UnknownTask
from celery_reliable.limits.pause import pauses_if_any
from celery_reliable.options import GATES
from celery_reliable.store.pauses import QUEUE, Pause

#: The table's columns: the gates found per task (the project's are printed once).
_TASK_GATES = tuple(gate for gate in GATES if gate not in PROJECT_GATES)

_CELLS = {
    Status.PASS: "[green]pass[/]",
    Status.MISS: "[bold red]MISS[/]",
    Status.WAIVED: "[yellow]waived[/]",
    Status.WARN: "[yellow]warn[/]",
}


@click.command(name="check")
@click.option("--task", "task_name", help="Audit only this task.")
@click.option("--json", "as_json_", is_flag=True, help="JSON instead of a table.")
@click.pass_context
def check_command(ctx: click.Context, task_name: str | None, as_json_: bool) -> None:
    """Audit every ReliableTask against the production gates; exit 1 on a miss.

    Gates: classified, bounded, idempotency, timeout, delivery, metrics, sentry (a
    warning only); metrics and sentry are the app's, shown once. A task waives one with
    waive={"gate": "reason"}, the app with reliable_waive = {"gate": "reason"}.
    """
    from celery_reliable.cli import app_of

    try:
        app = app_of(ctx)
        findings = check(app, task=task_name)
    except (UnknownTask, ImproperlyConfigured, ValueError, TypeError) as exc:
        # An unknown task, a bad setting, or a task class that cannot be built (a
        # misspelt option or waive= gate): one line, not a traceback.
        raise click.ClickException(str(exc.args[0] if exc.args else exc)) from exc
    if not findings.tasks:
        # Most often `-A` is missing and Celery fell back to its empty default app: an
        # audit of nothing must not pass a CI step.
        raise click.ClickException(
            f"no ReliableTask in the app {app.main or 'default'!r}: run "
            "`celery -A proj reliable check` with the module that defines the app "
            "and imports its tasks"
        )
    paused, unread = pauses_if_any(app)
    if as_json_:
        data = {
            **findings.to_dict(),
            "paused": [row.to_dict() for row in paused],
            "paused_unread": unread,
        }
        click.echo(json.dumps(data, indent=2))
    elif sys.stdout.isatty():
        _print_table(findings, paused, unread)
    else:
        _print_lines(findings, paused, unread)
    ctx.exit(0 if findings.passed else 1)


def _paused_subject(row: Pause) -> str:
    """The first column of a pause's line: the task's name, or ``(queue NAME)``."""
    return f"(queue {row.name})" if row.kind == QUEUE else row.name


def _paused_reason(row: Pause) -> str:
    by = f" by {row.paused_by}" if row.paused_by else ""
    why = f": {row.reason}" if row.reason else ""
    return f"{row.kind} paused{by} since {when(row.paused_at)} UTC{why}"


def _paused_summary(paused: list[Pause]) -> str:
    if not paused:
        return ""
    names = ", ".join(f"{row.kind} {row.name}" for row in paused)
    return f" (paused, not a gate: {names})"


def _window(seconds: float | None) -> str:
    return "-" if seconds is None else format_seconds(seconds)


def _print_table(findings: Findings, paused: list[Pause], unread: str | None) -> None:
    console = Console()
    out = Table(title="celery_reliable gates")
    out.add_column("task", overflow="fold")
    for gate in _TASK_GATES:
        out.add_column(gate, justify="center")
    out.add_column("retry window", justify="right")
    for audit in findings.tasks:
        out.add_row(
            escape(audit.task),
            *(_CELLS[audit.gate(gate).status] for gate in _TASK_GATES),
            _window(audit.retry_window),
        )
    console.print(out)
    if findings.project:
        console.print("\n[bold]Project[/] (the app's settings, for every task)")
        for result in findings.project:
            console.print(
                f"  [bold]{result.gate}[/]: {_CELLS[result.status]}  {escape(result.reason)}",
                highlight=False,
            )
    for status, title in (
        (Status.MISS, "Misses"),
        (Status.WAIVED, "Waived"),
        (Status.WARN, "Warnings"),
    ):
        # The task's own findings: a task's waiver of a project gate is listed here.
        lines = [
            (audit.task, result)
            for audit in findings.tasks
            for result in audit.own
            if result.status is status
        ]
        if lines:
            console.print(f"\n[bold]{title}[/]")
            for task, result in lines:
                console.print(
                    f"  {escape(task)}  [bold]{result.gate}[/]: {escape(result.reason)}",
                    highlight=False,
                )
    if paused or unread:
        console.print("\n[bold]Paused[/] (not a gate: `celery reliable resume` ends a pause)")
        for row in paused:
            console.print(
                f"  {escape(_paused_subject(row))}  {escape(_paused_reason(row))}",
                highlight=False,
            )
        if unread:
            console.print(f"  {escape(unread)}", highlight=False)
    console.print()
    console.print(_summary(findings) + _paused_summary(paused), highlight=False)


def _print_lines(findings: Findings, paused: list[Pause], unread: str | None) -> None:
    """Piped: one line per gate of the project, then per task and gate of its own,
    whole, tab-separated: ``grep miss`` works; then one ``paused`` line per pause."""
    click.echo("task\tgate\tstatus\treason")
    for result in findings.project:
        _echo_line(PROJECT, result)
    for audit in findings.tasks:
        for result in audit.own:
            _echo_line(audit.task, result)
    for row in paused:
        cells = (_paused_subject(row), "-", "paused", _paused_reason(row))
        click.echo("\t".join(one_line(cell) for cell in cells))
    if unread:
        click.echo("\t".join((PROJECT, "-", "paused", one_line(unread))))
    click.echo(_summary(findings) + _paused_summary(paused))


def _echo_line(task: str, result: GateResult) -> None:
    cells = (task, result.gate, str(result.status), result.reason)
    click.echo("\t".join(one_line(cell) for cell in cells))


def _summary(findings: Findings) -> str:
    misses = findings.misses()
    passing = sum(1 for audit in findings.tasks if audit.passed)
    text = f"{len(findings.tasks)} tasks audited, {passing} meet every gate"
    project = [result.gate for result in findings.project if result.failed]
    if project:
        text += f" of their own; the project misses {', '.join(project)}"
    if misses:
        text += f"; {len(misses)} unwaived {'miss' if len(misses) == 1 else 'misses'}: check fails"
    else:
        text += "; check passes"
    if findings.not_reliable:
        text += (
            f" ({len(findings.not_reliable)} plain Celery tasks not audited: "
            + ", ".join(findings.not_reliable)
            + ")"
        )
    return text
