"""A task's reliability report: ``celery reliable report TASK``.

What the task declares (queue, limits, idempotency, unique enqueue, its heartbeat and
the steps its body names, each rule with its delay schedule, Celery's own
``autoretry_for`` if it kept it, the unclassified policy, metrics and error reports),
how it stands at the gates, and what the store saw of it lately (outcomes of the last
24 hours, dead letters, receipts held, the median duration, executions beating now,
and the store's outbox: its depth, oldest message and relays listening), with the
``beat_schedule`` entries that publish it: each one's last and next run.
:func:`build_report` returns the data; :meth:`Report.markdown` renders it for a pull
request, :meth:`Report.to_dict` as JSON.
"""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable import metrics
from celery_reliable.audit.gates import (
    APP_WAIVER,
    TaskAudit,
    audit_task,
    declared_rules,
    format_seconds,
    reliable_task,
)
from celery_reliable.claims import heartbeat_lease_seconds
from celery_reliable.compat.autoretry import Autoretry
from celery_reliable.compat.celery_internals import time_limits
from celery_reliable.config import ReliableSettings, as_written, settings_for
from celery_reliable.delivery.broker import BrokerFacts
from celery_reliable.docs import docs_url
from celery_reliable.errors import MissingDependency, StoreUnavailable
from celery_reliable.metrics import LIMITED
from celery_reliable.options import heartbeat_grace
from celery_reliable.outcomes import Outcome
from celery_reliable.policy import CancelRule, DiscardRule, RetryRule, retry_schedule
from celery_reliable.store.timeutil import utcnow
from celery_reliable.task import ReliableTask

#: Hours of history the report covers.
HISTORY_HOURS = 24


@dataclass
class Report:
    task: str
    design: dict[str, Any]
    rules: list[dict[str, Any]]
    unclassified: str
    monitoring: dict[str, Any]
    audit: TaskAudit
    #: From the store; ``store_error`` says why it is missing.
    recent: dict[str, Any] | None = None
    store_error: str | None = None
    notes: list[str] = field(default_factory=list)
    #: The ``beat_schedule`` entries publishing the task, with their last and next run.
    periodic: list[dict[str, Any]] = field(default_factory=list)
    #: ``beat_scheduler`` is ``celery_reliable.beat:Scheduler`` (else no run is recorded).
    periodic_recorded: bool = True
    #: The store's outbox now (every task's messages): ``OutboxStatus.to_dict()`` and
    #: how relays run; None without figures from the store.
    outbox: dict[str, Any] | None = None
    #: The task as a batch's callback: one ``CallbackUse.to_dict()`` per role
    #: (``on_complete``, ``on_success``) it has in the batches the store keeps.
    batch_callback: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "design": self.design,
            "rules": self.rules,
            "unclassified": self.unclassified,
            "monitoring": self.monitoring,
            "gates": self.audit.to_dict(with_project=True),
            "last_24h": self.recent,
            "periodic": self.periodic,
            "outbox": self.outbox,
            "batch_callback": self.batch_callback,
            "store_error": self.store_error,
        }

    def markdown(self) -> str:
        return "\n".join(_markdown(self)) + "\n"


def build_report(app: Celery, task_name: str, *, with_store: bool = True) -> Report:
    """The report of one ReliableTask; ``UnknownTask`` for a name the app lacks."""
    task = reliable_task(app, task_name)
    settings = settings_for(app)
    broker = BrokerFacts.of(app)
    autoretry = Autoretry.of(task)
    report = Report(
        task=task_name,
        design=_design(app, task, broker, settings),
        # Celery's autoretry_for first: its wrapper retries before any rule sees the error.
        rules=([] if autoretry is None else [_autoretry_rule(autoretry)])
        + [_rule(rule) for rule in declared_rules(task)],
        unclassified=_unclassified(settings),
        monitoring=_monitoring(task, settings),
        audit=audit_task(task, settings, broker),
    )
    if with_store:
        _add_store_figures(app, report)
    _add_periodic(app, report, with_store=with_store and report.store_error is None)
    return report


def _add_periodic(app: Celery, report: Report, *, with_store: bool) -> None:
    from celery_reliable.beat.status import entries_of, entry_statuses, read_runs, scheduler_is_ours

    if not entries_of(app, report.task):
        return
    runs = None
    if with_store:
        from celery_reliable.store import store_for

        try:
            runs = read_runs(store_for(app))
        except StoreUnavailable as exc:
            report.store_error = f"the store is unavailable: {exc}"
    report.periodic = [s.to_dict() for s in entry_statuses(app, runs, task=report.task)]
    report.periodic_recorded = scheduler_is_ours(app)


def queue_of(app: Celery, task: Any) -> str:
    """The queue the task's messages go to: its ``queue`` option, ``task_routes``,
    else the default queue."""
    own = getattr(task, "queue", None)
    try:
        route = app.amqp.router.route({"queue": own} if own else {}, task.name)
        queue = route.get("queue")
        return str(getattr(queue, "name", queue) or app.conf.task_default_queue)
    except Exception:  # a custom router that needs real arguments
        return str(own or app.conf.task_default_queue)


def _design(
    app: Celery, task: ReliableTask, broker: BrokerFacts, settings: ReliableSettings
) -> dict[str, Any]:
    key = task._reliable_key
    unique = task._reliable_unique
    waivers = task._reliable_waivers
    if key is not None:
        source = key.source if isinstance(key.source, str) else _name(key.source)
        idempotency = f"idempotency_key {source!r}: a receipt per key in the store"
    elif "idempotency" in waivers:
        idempotency = f"none, waived: {waivers['idempotency']}"
    elif "idempotency" in settings.waive:
        idempotency = f"none, waived app-wide ({APP_WAIVER}): {settings.waive['idempotency']}"
    else:
        idempotency = "none declared"
    return {
        "module": type(task).__module__ if type(task).__module__ != "celery.app.base" else None,
        "queue": queue_of(app, task),
        "timeout": task.timeout,
        "soft_time_limit": time_limits(task, app)[0],
        "time_limit": time_limits(task, app)[1],
        "idempotency": idempotency,
        "unique": None
        if unique is None
        else {"period": unique.period, "keys": unique.keys, "release": unique.release},
        "acks_late": bool(task.acks_late),
        "reject_on_worker_lost": bool(task.reject_on_worker_lost),
        "broker": broker.transport,
        "visibility_timeout": broker.visibility_timeout,
        "max_snoozes": task.max_snoozes,
        "heartbeat": _heartbeat(task),
        "limits": [b.limit.describe() for b in task._reliable_limits.limits]
        if task._reliable_limits is not None
        else [],
        "steps": step_names(task),
        "waivers": dict(waivers),
    }


def _heartbeat(task: ReliableTask) -> dict[str, Any] | None:
    beat = task._reliable_heartbeat_timeout
    if beat is None:
        return None
    return {
        "heartbeat_timeout": beat,
        "grace": heartbeat_grace(beat),
        "lease": heartbeat_lease_seconds(beat) if task._reliable_key is not None else None,
    }


def step_names(task: Any) -> list[str]:
    """The names of the ``self.step("...")`` blocks in the task's body, in source order
    (names that are not string literals are not known before it runs)."""
    try:
        source = textwrap.dedent(inspect.getsource(inspect.unwrap(task.run)))
        tree = ast.parse(source)
    except (OSError, TypeError, SyntaxError):  # no source (a C function, a REPL)
        return []
    found = sorted(
        (node.lineno, node.col_offset, node.args[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "step"
        and node.args
        and isinstance(node.args[0], ast.Constant)
        and isinstance(node.args[0].value, str)
    )
    return list(dict.fromkeys(name for _, _, name in found))


def _name(value: Any) -> str:
    return str(getattr(value, "__qualname__", None) or repr(value))


def _rule(rule: Any) -> dict[str, Any]:
    classes = [t.__qualname__ for t in rule.exc_types]
    if isinstance(rule, RetryRule):
        try:
            schedule: list[dict[str, float]] | None = [
                {"attempt": s.attempt, "min": s.min_delay, "max": s.max_delay}
                for s in retry_schedule(rule)
            ]
        except ValueError:
            schedule = None
        return {
            "kind": "retry_on",
            "classes": classes,
            "attempts": rule.attempts,
            "wait": rule.wait.description,
            "jitter": rule.jitter,
            "report": rule.report,
            "schedule": schedule,
        }
    if isinstance(rule, DiscardRule):
        return {"kind": "discard_on", "classes": classes, "report": rule.report}
    assert isinstance(rule, CancelRule)
    return {"kind": "cancel_on", "classes": classes}


def _autoretry_rule(autoretry: Autoretry) -> dict[str, Any]:
    try:
        schedule: list[dict[str, float]] | None = [
            {"attempt": s.attempt, "min": s.min_delay, "max": s.max_delay}
            for s in autoretry.schedule()
        ]
    except ValueError:  # no max_retries, or an eta
        schedule = None
    return {
        "kind": autoretry.kind,
        "classes": [t.__qualname__ for t in autoretry.exc_types],
        "excluded": [t.__qualname__ for t in autoretry.excluded],
        "attempts": autoretry.attempts,
        "max_retries": autoretry.max_retries,
        "wait": autoretry.wait_description(),
        "jitter": autoretry.jitter,
        "report": False,
        "schedule": schedule,
    }


def _unclassified(settings: ReliableSettings) -> str:
    if settings.unclassified == "retry":
        return (
            f"retry: any other exception is retried ({settings.unclassified_attempts} "
            "attempts, exponential backoff), then EXHAUSTED"
        )
    return "fail: any other exception ends the job FAILED (a dead letter, reported to Sentry)"


def _monitoring(task: Any, settings: ReliableSettings) -> dict[str, Any]:
    statsd = settings.statsd_host is not None
    if settings.statsd_tags == "dogstatsd":
        names = [metrics.tagged_task_metric(settings.statsd_prefix, e) for e in metrics.TASK_EVENTS]
    else:
        names = [
            metrics.task_metric(settings.statsd_prefix, task.name, e) for e in metrics.TASK_EVENTS
        ]
    queue = queue_of(task.app, task)
    if settings.statsd_tags == "dogstatsd":
        depth = f"{metrics.tagged_queue_depth_metric(settings.statsd_prefix)} (queue:{queue})"
    else:
        depth = metrics.queue_depth_metric(settings.statsd_prefix, queue)
    return {
        "statsd": f"{settings.statsd_host}:{settings.statsd_port}" if statsd else None,
        "metrics": names if statsd else [],
        "queue_depth": {"metric": depth, "interval": settings.queue_depth_interval}
        if statsd
        else None,
        "tags": settings.statsd_tags,
        "sentry": settings.sentry,
        "sentry_initialised": _sentry_initialised(),
        "log_outcomes": settings.log_outcomes,
    }


def _sentry_initialised() -> bool:
    try:
        import sentry_sdk
    except ImportError:
        return False
    return bool(sentry_sdk.is_initialized())


def _add_store_figures(app: Celery, report: Report) -> None:
    from celery_reliable.store import store_for

    try:
        store = store_for(app)
    except (ImproperlyConfigured, MissingDependency) as exc:
        report.store_error = str(exc)
        return
    if store is None:
        setting = as_written(app, "reliable_database_url")
        report.store_error = f"{setting} is None: there is no store"
        return
    since = utcnow() - timedelta(hours=HISTORY_HOURS)
    try:
        summary = store.history.summary(report.task, since=since)
        dead = store.dead_letters.counts_by_outcome(report.task)
        receipts = store.receipts.counts(report.task)
        beating = [p for p in store.progress.running(limit=1000) if p.task_name == report.task]
        outbox = store.outbox.status(relays=True)
        callback_uses = store.batches.callback_uses(report.task)
    except StoreUnavailable as exc:
        report.store_error = f"the store is unavailable: {exc}"
        return
    counts = {name: summary.counts.get(name, 0) for name in (*(o.value for o in Outcome), LIMITED)}
    report.recent = {
        "since": since.isoformat(timespec="seconds") + "Z",
        "executions": summary.executions,
        "outcomes": counts,
        "rates": {name: summary.rate(name) for name in counts},
        "median_duration": summary.median_duration,
        "mean_duration": summary.mean_duration,
        "max_duration": summary.duration_max if summary.duration_count else None,
        "dead_letters": {o: {"total": t, "not_retried": p} for o, (t, p) in dead.items()},
        "receipts": receipts,
        "beating_now": len(beating),
        "oldest_beat_age": max((p.age() for p in beating), default=None),
    }
    report.batch_callback = [use.to_dict() for use in callback_uses]
    settings = settings_for(app)
    report.outbox = {
        **outbox.to_dict(),
        "relay_in_workers": settings.outbox_relay,
        "poll_interval": settings.outbox_poll_interval,
    }


# ------------------------------------------------------------------------- Markdown


def _seconds(value: float | None) -> str:
    return "-" if value is None else format_seconds(float(value))


def _markdown(report: Report) -> list[str]:
    d = report.design
    lines = [f"# Reliability report — `{report.task}`", "", "## Design", ""]
    if d["module"]:
        lines.append(f"- Module: `{d['module']}`")
    limits = f"soft {_seconds(d['soft_time_limit'])}, hard {_seconds(d['time_limit'])}"
    timeout = f"timeout={d['timeout']:g}s ({limits})" if d["timeout"] else limits
    lines += [
        f"- Queue: `{d['queue']}`",
        f"- Timeout: {timeout}",
        f"- Idempotency strategy: {d['idempotency']}",
    ]
    unique = d["unique"]
    if unique is None:
        lines.append("- Unique enqueue: off")
    else:
        keys = ", ".join(unique["keys"]) if unique["keys"] else "all arguments"
        lines.append(
            f"- Unique enqueue: one job per ({keys}) for {_seconds(unique['period'])}, "
            f"released at {unique['release']}"
        )
    lines += _long_task_markdown(d)
    acks = "late" if d["acks_late"] else "early"
    lost = "on" if d["reject_on_worker_lost"] else "off"
    vt = d["visibility_timeout"]
    broker = d["broker"] + (f" (visibility_timeout {_seconds(vt)})" if vt else "")
    lines += [
        f"- Delivery: acks {acks}, reject_on_worker_lost {lost}; broker {broker}",
        f"- Snoozes allowed: {d['max_snoozes']}",
        *_periodic_markdown(report),
        "",
        "## Error classification",
        "",
    ]
    lines += _rules_markdown(report.rules)
    lines += [f"- Unclassified exceptions: {report.unclassified}", ""]
    window = report.audit.retry_window
    lines += [
        "## Retry configuration",
        "",
        f"- Worst-case retry window: {_seconds(window)} (every rule used up, jitter at its "
        "maximum)",
        "",
    ]
    for rule in report.rules:
        if rule["kind"] not in ("retry_on", "autoretry_for"):
            continue
        lines += [_retry_heading(rule), ""]
        if rule["attempts"] is None:
            lines += ["(max_retries=None: Celery retries without end)", ""]
            continue
        if rule["schedule"] is None:
            lines += ["(the delays depend on the exception: not known ahead)", ""]
            continue
        lines += ["| after attempt | wait at least | wait at most |", "|---:|---:|---:|"]
        for step in rule["schedule"]:
            lines.append(
                f"| {step['attempt']} | {_seconds(step['min'])} | {_seconds(step['max'])} |"
            )
        lines.append("")
    lines += _monitoring_markdown(report.monitoring)
    lines += ["## Gates", "", "| gate | status | reason |", "|---|---|---|"]
    for result in report.audit.gates:
        lines.append(f"| {result.gate} | {result.status.value} | {_cell(result.reason)} |")
    # The project's gates count here: the report is the task's whole standing.
    passed = not any(result.failed for result in report.audit.gates)
    verdict = "passes every gate" if passed else "misses a gate: `check` fails"
    lines += ["", f"The task {verdict}.", ""]
    lines += _recent_markdown(report)
    return lines


def _long_task_markdown(d: dict[str, Any]) -> list[str]:
    beat = d["heartbeat"]
    if beat is None:
        hard = _seconds(d["time_limit"])
        lines = [
            f"- Heartbeat: none (a body that hangs holds its worker slot until the hard "
            f"time limit, {hard})"
        ]
    else:
        timeout = beat["heartbeat_timeout"]
        lines = [
            f"- Heartbeat: heartbeat_timeout={timeout:g}s: a silent body gets "
            f"HeartbeatTimeout after {_seconds(timeout)}, and on prefork its process is "
            f"killed {_seconds(beat['grace'])} later"
            + (
                f"; its key's lease is {_seconds(beat['lease'])}, renewed by each beat"
                if beat["lease"] is not None
                else ""
            )
        ]
    if d["limits"]:
        lines.append(
            f"- Limits: {', '.join(d['limits'])}, across every worker (a job over a limit "
            "waits its turn, SNOOZED without spending an attempt: `limited` below)"
        )
    if d["steps"]:
        named = ", ".join(f"`{name}`" for name in d["steps"])
        lines.append(f"- Steps: {named} (a finished step is skipped when the job runs again)")
    return lines


def _periodic_markdown(report: Report) -> list[str]:
    lines = []
    for entry in report.periodic:
        if entry["error"]:
            name, error = entry["entry"], entry["error"]
            lines.append(f"- Periodic: `{name}`: its due times cannot be computed ({error})")
            continue
        last = entry["last_run"]
        if last is not None:
            ran = (
                f"last run due {last['due_at']} (published {last['published_at']}, "
                f"task id `{last['task_id']}`)"
            )
        elif not report.periodic_recorded:
            ran = "runs not recorded (beat_scheduler is not celery_reliable.beat:Scheduler)"
        else:
            ran = "no run recorded"
        other = entry["newest_other"]
        if other is not None:
            ran += f"; newest slot {other['state']} (due {other['due_at']})"
        upcoming = entry["next_due"] or "never"
        lines.append(
            f"- Periodic: `{entry['entry']}`, {entry['schedule']}: {ran}; next due {upcoming}"
        )
    return lines


def _retry_heading(rule: dict[str, Any]) -> str:
    classes = ", ".join(rule["classes"])
    if rule["kind"] == "autoretry_for":
        attempts = "unbounded" if rule["attempts"] is None else f"{rule['attempts']} attempts"
        return f"`{classes}` (autoretry_for): {attempts}, {rule['wait']}"
    return f"`{classes}`: {rule['attempts']} attempts, {rule['wait']}"


def _autoretry_markdown(rule: dict[str, Any]) -> str:
    text = (
        f"- Retried by Celery first (autoretry_for, max_retries={rule['max_retries']}), "
        "then EXHAUSTED unless a rule takes over: " + ", ".join(f"`{c}`" for c in rule["classes"])
    )
    if rule["excluded"]:
        text += " (not " + ", ".join(f"`{c}`" for c in rule["excluded"]) + ")"
    return text


def _rules_markdown(rules: list[dict[str, Any]]) -> list[str]:
    by_kind: dict[str, list[str]] = {"retry_on": [], "discard_on": [], "cancel_on": []}
    for rule in rules:
        if rule["kind"] == "autoretry_for":
            continue
        text = ", ".join(f"`{c}`" for c in rule["classes"])
        if rule.get("report"):
            text += " (reported to Sentry)"
        by_kind[rule["kind"]].append(text)
    return [
        *(_autoretry_markdown(rule) for rule in rules if rule["kind"] == "autoretry_for"),
        f"- Transient, retried (retry_on): {'; '.join(by_kind['retry_on']) or 'none'}",
        f"- Permanent, discarded (discard_on): {'; '.join(by_kind['discard_on']) or 'none'}",
        f"- Expected, cancelled (cancel_on): {'; '.join(by_kind['cancel_on']) or 'none'}",
        *(
            f"- Built in, the store unreachable at claim time: `{rule.describe()}`"
            for rule in ReliableTask._reliable_policy.rules
        ),
    ]


def _monitoring_markdown(monitoring: dict[str, Any]) -> list[str]:
    lines = ["## Monitoring", ""]
    if monitoring["statsd"]:
        tags = " (DogStatsD tags task, queue, outcome)" if monitoring["tags"] else ""
        names = monitoring["metrics"]
        split = len(names) - len(metrics.TIMER_EVENTS)
        lines.append(f"- Metrics: StatsD at {monitoring['statsd']}{tags}:")
        lines.append(f"  - counters: {', '.join(f'`{n}`' for n in names[:split])}")
        lines.append(f"  - timers: {', '.join(f'`{n}`' for n in names[split:])}")
        depth = monitoring["queue_depth"]
        lines.append(
            f"- Queue depth: the gauge `{depth['metric']}`, sampled every "
            f"{_seconds(depth['interval'])} by the workers consuming the queue (alert "
            f"rules: {docs_url('grafana/README.md')})"
        )
    else:
        lines.append("- Metrics: off (reliable_statsd_host is not set)")
    if not monitoring["sentry"]:
        lines.append("- Error tracking: off (reliable_sentry is False)")
    elif monitoring["sentry_initialised"]:
        lines.append("- Error tracking: Sentry, the SDK initialised with the app")
    else:
        lines.append(
            "- Error tracking: Sentry reports on, but the SDK was not initialised when the "
            "app was loaded"
        )
    lines.append(f"- Outcome log lines: {'on' if monitoring['log_outcomes'] else 'off'}")
    lines.append("")
    return lines


def _recent_markdown(report: Report) -> list[str]:
    lines = [f"## Last {HISTORY_HOURS} hours", ""]
    recent = report.recent
    if recent is None:
        return [*lines, f"No figures: {report.store_error}", ""]
    if recent["executions"] == 0:
        lines += ["No execution recorded in the outcome history.", ""]
    else:
        lines += ["| outcome | executions | rate |", "|---|---:|---:|"]
        for name, count in recent["outcomes"].items():
            if count:
                lines.append(f"| {name} | {count} | {recent['rates'][name]:.1%} |")
        lines += [f"| all | {recent['executions']} | |", ""]
        median = recent["median_duration"]
        if median is not None:
            mean, longest = recent["mean_duration"], recent["max_duration"]
            lines.append(
                f"- Duration: median ≈ {_duration(median)}, mean {_duration(mean)}, "
                f"longest {_duration(longest)}"
            )
    dead = recent["dead_letters"]
    if dead:
        parts = [f"{o} {v['total']} ({v['not_retried']} not retried)" for o, v in dead.items()]
        lines.append(f"- Dead letters (all time): {', '.join(parts)}")
    else:
        lines.append("- Dead letters (all time): none")
    r = recent["receipts"]
    lines.append(
        f"- Receipts held: {r['succeeded']} succeeded, {r['in_progress']} in progress "
        f"({r['abandoned']} abandoned, lease run out)"
    )
    if recent["beating_now"]:
        lines.append(
            f"- Running with a heartbeat now: {recent['beating_now']} (the longest silent "
            f"for {_duration(recent['oldest_beat_age'])})"
        )
    lines += [batch_callback_line(use) for use in report.batch_callback]
    if report.outbox is not None:
        lines.append(outbox_line(report.outbox))
    lines.append("")
    return lines


def batch_callback_line(use: dict[str, Any]) -> str:
    """The report's line on the task as one callback of batches (those the store keeps:
    completed ones are pruned after ``reliable_receipt_ttl``)."""
    which = use["which"]
    parts = [f"{use['fired']} fired"]
    if use["skipped"]:
        parts.append(f"{use['skipped']} not fired (a member ended discarded, exhausted or failed)")
    if use["waiting"]:
        parts.append(f"{use['waiting']} waiting for their last member")
    if use["abandoned"]:
        parts.append(f"{use['abandoned']} abandoned (their block raised)")
    last = use["last"]
    noun = "batch" if use["batches"] == 1 else "batches"
    head = f"- Batch callback: `{which}` of {use['batches']} {noun} kept: {', '.join(parts)}"
    if last is None:  # pruned between the two reads of the store
        return head
    total = "?" if last["total"] is None else last["total"]
    described = f" ({last['description']!r})" if last["description"] else ""
    ended = f", completed {last['completed_at']}" if last["completed_at"] else ""
    return (
        f"{head}; "
        f"the newest `{last['batch']}`{described}, {last['state']} {last['done']}/{total}, "
        f"created {last['created_at']}{ended} (its task id `{last['batch']}-{which}`)"
    )


def outbox_line(outbox: dict[str, Any]) -> str:
    """The report's line on the outbox (every task's messages, not this one's only)."""
    depth = outbox["depth"]
    if depth == 0:
        waiting = "empty"
    else:
        noun = "message waits" if depth == 1 else "messages wait"
        waiting = (
            f"{depth} {noun}, the oldest written {outbox['oldest_at']} "
            f"({_duration(outbox['oldest_age'])} ago)"
        )
    relays = outbox["relays"]
    if relays is not None:
        seen = f"{relays} relay{'' if relays == 1 else 's'} listening for its commits"
    else:
        seen = f"relays not seen from SQLite (they poll every {outbox['poll_interval']:g}s)"
    workers = "on" if outbox["relay_in_workers"] else "off"
    return (
        f"- Outbox (every task's, now): {waiting}; {seen}; a relay in each worker "
        f"{workers} (reliable_outbox_relay)"
    )


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else format_seconds(seconds)


def _cell(text: str) -> str:
    return text.replace("|", "\\|")
