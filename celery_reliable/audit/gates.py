"""Production-readiness gates: the audit behind ``celery reliable check``.

Each ReliableTask of an app is held to the gates job teams check by hand before a job
ships (see ``options.GATES``): errors classified, retries bounded with backoff,
idempotency decided, a timeout, safe delivery, metrics and error reports wired.
:func:`check` returns the findings as data, so a project's own test can assert on
them and the CLI and web view only render them::

    from celery_reliable.gates import check
    assert check(app).passed, check(app).misses()

Facts of the whole app (``PROJECT_GATES``: StatsD configured, Sentry set up) are
found once, in :attr:`Findings.project`, not once per task; a task lists them among
its own only when it waives one itself. ``reliable_waive`` waives a gate app-wide, and
a task's own ``waive=`` wins over it.

Reads the app's configuration and task classes only: no broker, no store.
"""

from __future__ import annotations

import difflib
import enum
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery import Celery

from celery_reliable.compat.autoretry import Autoretry
from celery_reliable.compat.celery_internals import time_limits
from celery_reliable.config import ReliableSettings, settings_for
from celery_reliable.delivery.broker import BrokerFacts
from celery_reliable.docs import docs_url
from celery_reliable.errors import UnknownTask
from celery_reliable.options import GATES
from celery_reliable.policy import RULES_ATTR, RetryRule, RetryStep, Rule, retry_schedule
from celery_reliable.task import ReliableTask

#: Time limits above this (seconds) without a heartbeat are worth a warning: a hang
#: holds a slot for as long as the limit.
LONG_TASK_SECONDS = 600.0

#: Gates that read only the app's settings: the same finding for every task, found
#: and shown once for the project.
PROJECT_GATES = ("metrics", "sentry")
#: The ``task`` of a project-level finding in ``Findings.misses()`` and piped output.
PROJECT = "(project)"
#: Who waived a gate: the task's own ``waive=`` option, or the app's ``reliable_waive``.
TASK_WAIVER = "waive"
APP_WAIVER = "reliable_waive"


class Status(str, enum.Enum):
    """How a task stands at one gate."""

    PASS = "pass"
    #: The gate is not met and not waived: ``check`` exits 1.
    MISS = "miss"
    #: Not met, but the task waives it with a reason.
    WAIVED = "waived"
    #: Not met, and only worth a warning (the ``sentry`` gate): never fails ``check``.
    WARN = "warn"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class GateResult:
    gate: str
    status: Status
    #: Why the task misses (or passes) the gate, in one line.
    reason: str
    #: ``WAIVED`` only: ``"waive"`` (the task's option) or ``"reliable_waive"`` (the app's).
    waived_by: str | None = None
    #: ``"project"``: the app's finding, shared by every task that does not waive the
    #: gate itself; ``"task"``: this task's own.
    scope: str = "task"

    @property
    def failed(self) -> bool:
        return self.status is Status.MISS

    def entry(self) -> dict[str, str]:
        """``{"status", "reason"}`` (and ``"waived_by"`` when waived), for JSON."""
        entry = {"status": self.status.value, "reason": self.reason}
        if self.waived_by is not None:
            entry["waived_by"] = self.waived_by
        return entry

    def to_dict(self) -> dict[str, str]:
        return {"gate": self.gate, **self.entry()}


@dataclass(frozen=True)
class TaskAudit:
    """One task at every gate."""

    task: str
    #: False for a task with declarations that is not a ReliableTask.
    reliable: bool
    gates: tuple[GateResult, ...]
    #: Worst case, in seconds, from the first failure to the last retry (every retry
    #: rule used up, each delay at its jitter's maximum); None without retry rules or
    #: when a ``wait`` cannot be computed ahead.
    retry_window: float | None = None

    @property
    def own(self) -> tuple[GateResult, ...]:
        """The findings about this task: every gate but the project's shared ones."""
        return tuple(result for result in self.gates if result.scope != "project")

    @property
    def passed(self) -> bool:
        """The task meets every gate of its own (the project's: ``Findings.project``)."""
        return not any(result.failed for result in self.own)

    def gate(self, name: str) -> GateResult:
        """The task at gate ``name``: its own finding, or the project's it shares."""
        for result in self.gates:
            if result.gate == name:
                return result
        raise KeyError(f"no gate {name!r}; the gates are {', '.join(GATES)}")

    def to_dict(self, *, with_project: bool = False) -> dict[str, Any]:
        """Its own gates; ``with_project`` adds the project's, marked ``"scope"``."""
        gates = {result.gate: result.entry() for result in self.own}
        if with_project:
            gates = {
                result.gate: gates.get(result.gate) or {**result.entry(), "scope": "project"}
                for result in self.gates
            }
        return {
            "task": self.task,
            "reliable_task": self.reliable,
            "passed": self.passed,
            "retry_window": self.retry_window,
            "gates": gates,
        }


@dataclass(frozen=True)
class Findings:
    """The audit of an app: one :class:`TaskAudit` per task, by task name."""

    tasks: tuple[TaskAudit, ...]
    #: The app's own tasks that are plain Celery tasks (not audited).
    not_reliable: tuple[str, ...] = field(default=())
    #: The project-level gates some task shares (``PROJECT_GATES``), once for the app.
    project: tuple[GateResult, ...] = field(default=())
    #: ``reliable_waive``: the gates the app waives for every task, with the reasons.
    waivers: Mapping[str, str] = field(default_factory=dict)

    @property
    def passed(self) -> bool:
        return not self.misses()

    def misses(self) -> list[tuple[str, GateResult]]:
        """``(task, result)`` for every unwaived miss: what makes ``check`` exit 1. A
        project-level miss comes once, as ``(PROJECT, result)``."""
        return [(PROJECT, r) for r in self.project if r.failed] + [
            (a.task, r) for a in self.tasks for r in a.own if r.failed
        ]

    def task(self, name: str) -> TaskAudit:
        for audit in self.tasks:
            if audit.task == name:
                return audit
        raise UnknownTask(f"no audited task {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "gates": list(GATES),
            "project": {
                "gates": {result.gate: result.entry() for result in self.project},
                "waivers": dict(self.waivers),
            },
            "tasks": [audit.to_dict() for audit in self.tasks],
            "not_reliable_tasks": list(self.not_reliable),
        }


def check(app: Celery, task: str | None = None) -> Findings:
    """Audit every ReliableTask of ``app`` (or only ``task``) against the gates.

    A task whose function declares ``retry_on``/``discard_on``/``cancel_on`` without
    ``base=ReliableTask`` is audited too: it misses ``classified``.
    """
    app.finalize(auto=True)
    settings = settings_for(app)
    broker = BrokerFacts.of(app)
    audited, plain = _tasks_of(app)
    if task is not None:
        if task not in audited:
            raise UnknownTask(unknown_task_message(task, audited, plain))
        audited = {task: audited[task]}
    project = audit_project(settings)
    audits = tuple(
        audit_task(instance, settings, broker, project) for _, instance in sorted(audited.items())
    )
    # A project finding every task waives itself concerns no task: no line for it.
    shared = tuple(r for r in project if any(a.gate(r.gate) is r for a in audits))
    return Findings(
        tasks=audits,
        not_reliable=tuple(sorted(plain)) if task is None else (),
        project=shared,
        waivers=dict(settings.waive),
    )


def reliable_task(app: Celery, name: str) -> Any:
    """The app's ReliableTask of that name, or ``UnknownTask`` saying what there is."""
    app.finalize(auto=True)
    found = app.tasks.get(name)
    if isinstance(found, ReliableTask):
        return found
    audited, plain = _tasks_of(app)
    reliable = {n: t for n, t in audited.items() if isinstance(t, ReliableTask)}
    raise UnknownTask(unknown_task_message(name, reliable, [*plain, *audited]))


def reliable_task_names(app: Celery) -> list[str]:
    """The names of the app's ReliableTasks."""
    app.finalize(auto=True)
    return sorted(name for name, task in app.tasks.items() if isinstance(task, ReliableTask))


def _tasks_of(app: Celery) -> tuple[dict[str, Any], list[str]]:
    """(tasks to audit by name, the app's own plain Celery tasks)."""
    audited: dict[str, Any] = {}
    plain: list[str] = []
    for name, instance in app.tasks.items():
        if isinstance(instance, ReliableTask) or getattr(instance.run, RULES_ATTR, None):
            audited[name] = instance
        elif not name.startswith(("celery.", "celery_reliable.")):
            plain.append(name)  # not Celery's own, nor ours (a batch's ending)
    return audited, plain


def unknown_task_message(name: str, audited: Mapping[str, Any], plain: list[str]) -> str:
    if name in plain:
        return f"task {name!r} is not a ReliableTask: add base=ReliableTask to audit it"
    close = difflib.get_close_matches(name, list(audited), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(audited)) or "none"
    return f"no task named {name!r}{hint} (the app's ReliableTasks: {known})"


def audit_project(settings: ReliableSettings) -> tuple[GateResult, ...]:
    """The project-level gates, once for the app, ``reliable_waive`` applied."""
    results = []
    for gate in PROJECT_GATES:
        result = _PROJECT_GATES[gate](settings)
        waiver = settings.waive.get(gate)
        if waiver is not None and result.status is Status.PASS:
            # Said once, for the project: the app's waiver can go.
            result = replace(result, reason=f"{result.reason} ({APP_WAIVER} not needed)")
        elif waiver is not None:
            result = _app_waived(result, waiver)
        results.append(replace(result, scope="project"))
    return tuple(results)


def audit_task(
    task: Any,
    settings: ReliableSettings,
    broker: BrokerFacts,
    project: tuple[GateResult, ...] | None = None,
) -> TaskAudit:
    """One task against every gate, its waivers applied. A project-level gate the task
    does not waive itself is the project's finding (``audit_project``), shared."""
    reliable = isinstance(task, ReliableTask)
    plan = RetryPlan.of(task, settings) if reliable else RetryPlan((), None, None)
    waivers: Mapping[str, str] = getattr(task, "_reliable_waivers", {}) if reliable else {}
    shared = {r.gate: r for r in (audit_project(settings) if project is None else project)}
    results = []
    for gate in GATES:
        own_waiver = waivers.get(gate)
        if gate in shared and own_waiver is None:
            results.append(shared[gate])
            continue
        if gate in _PROJECT_GATES:
            result = _PROJECT_GATES[gate](settings)
        else:
            result = _TASK_GATES[gate](task, settings, broker, plan)
        results.append(_waive(result, own_waiver, settings.waive.get(gate)))
    return TaskAudit(
        task=task.name, reliable=reliable, gates=tuple(results), retry_window=plan.window
    )


def _waive(result: GateResult, own: str | None, app_wide: str | None) -> GateResult:
    """The task's own waiver wins over the app's; a task that meets the gate says
    nothing of the app's waiver (every such task would repeat it)."""
    if own is not None:
        if result.status is Status.PASS:
            return replace(result, reason=f"{result.reason} (waiver not needed)")
        return GateResult(result.gate, Status.WAIVED, own, waived_by=TASK_WAIVER)
    if app_wide is not None and result.status is not Status.PASS:
        return _app_waived(result, app_wide)
    return result


def _app_waived(result: GateResult, reason: str) -> GateResult:
    return GateResult(
        result.gate,
        Status.WAIVED,
        f"{APP_WAIVER} (app-wide): {reason}",
        waived_by=APP_WAIVER,
    )


@dataclass(frozen=True)
class Retries:
    """One source of a task's retries: a retry rule, or Celery's ``autoretry_for``."""

    #: The source as declared: ``retry_on(...)`` or ``autoretry_for(...)``.
    source: str
    #: Its budget in the ``bounded`` gate's line: ``5``, ``4 (autoretry_for, ...)``.
    attempts: str
    steps: tuple[RetryStep, ...]
    #: Each retry's delay before jitter: what the ``bounded`` gate asks to grow.
    base_delays: tuple[float, ...]
    #: How to make a delay that does not grow grow.
    advice: str

    @classmethod
    def of_rule(cls, rule: RetryRule) -> Retries:
        steps = tuple(retry_schedule(rule))
        return cls(
            source=rule.describe(),
            attempts=str(rule.attempts),
            steps=steps,
            # Our jitter only adds: the least delay is the strategy's.
            base_delays=tuple(step.min_delay for step in steps),
            advice="use exponential() or polynomial()",
        )

    @classmethod
    def of_autoretry(cls, autoretry: Autoretry) -> Retries:
        steps = tuple(autoretry.schedule())
        return cls(
            source=autoretry.describe(),
            attempts=f"{autoretry.attempts} (autoretry_for, max_retries={autoretry.max_retries})",
            steps=steps,
            # Celery's full jitter draws below its backoff: the most is the backoff.
            base_delays=tuple(step.max_delay for step in steps),
            advice="set retry_backoff=True, or move to retry_on(..., wait=exponential())",
        )


@dataclass(frozen=True)
class RetryPlan:
    """The retries of a task (its rules', Celery's ``autoretry_for``) and the delays
    they can produce."""

    sources: tuple[Retries, ...]
    #: Sum of every retry's longest delay; None if a wait cannot be computed ahead,
    #: or Celery retries without end.
    window: float | None
    #: The longest single delay (the largest countdown a retry publishes).
    longest_delay: float | None
    #: Why the delays are unknown, when they are.
    unknown: str | None = None
    #: Celery's own ``autoretry_for``: it retries its errors before any rule sees them.
    autoretry: Autoretry | None = None

    @classmethod
    def of(cls, task: Any, settings: ReliableSettings) -> RetryPlan:
        rules = tuple(
            r for r in declared_rules(task) if isinstance(r, RetryRule)
        ) + _unclassified_rules(settings)
        autoretry = Autoretry.of(task)
        if autoretry is not None and autoretry.max_retries is None:
            return cls((), None, None, autoretry=autoretry)  # the bounded gate says why
        try:
            sources = tuple(Retries.of_rule(rule) for rule in rules)
            if autoretry is not None:
                sources += (Retries.of_autoretry(autoretry),)
        except ValueError as exc:
            return cls((), None, None, unknown=str(exc), autoretry=autoretry)
        if not sources:
            return cls((), None, None)
        # Worst case: every budget used up. Celery's retries come before a rule's for
        # the same error, and counted apart from them.
        delays = [step.max_delay for source in sources for step in source.steps]
        return cls(sources, sum(delays), max(delays, default=0.0), autoretry=autoretry)


def declared_rules(task: Any) -> list[Rule]:
    """The task's own declarations (its classes' and function's), without the rule
    every ReliableTask has built in (``StoreUnavailable`` retried)."""
    builtin = {id(rule) for rule in ReliableTask._reliable_policy.rules}
    if isinstance(task, ReliableTask):
        return [rule for rule in task.reliable_rules() if id(rule) not in builtin]
    return list(getattr(task.run, RULES_ATTR, ()))


def _unclassified_rules(settings: ReliableSettings) -> tuple[RetryRule, ...]:
    rule = settings.unclassified_rule
    return () if rule is None else (rule,)


_Gate = Callable[[Any, ReliableSettings, BrokerFacts, RetryPlan], GateResult]


def _classified(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    rules: list[Rule | Autoretry] = [*declared_rules(task)]
    if plan.autoretry is not None:
        rules.append(plan.autoretry)  # retried by Celery, then EXHAUSTED
    if not isinstance(task, ReliableTask):
        return GateResult(
            "classified",
            Status.MISS,
            "declares retry_on/discard_on/cancel_on but is not a ReliableTask, so they do "
            "nothing: add base=ReliableTask (a worker refuses to start like this)",
        )
    if rules:
        kinds = sorted({_kind(rule) for rule in rules})
        count = f"{len(rules)} rule{'s' if len(rules) > 1 else ''}"
        return GateResult("classified", Status.PASS, f"{count} ({', '.join(kinds)})")
    if settings.unclassified == "retry":
        return GateResult(
            "classified",
            Status.PASS,
            "no declarations; reliable_unclassified='retry' retries every exception "
            f"({settings.unclassified_attempts} attempts)",
        )
    return GateResult(
        "classified",
        Status.MISS,
        "no retry_on/discard_on/cancel_on: every exception ends the job FAILED; declare "
        "which errors are transient (retry_on) and which permanent (discard_on)",
    )


def _kind(rule: Rule | Autoretry) -> str:
    return rule.kind if isinstance(rule, Autoretry) else f"{rule.kind}_on"


def _bounded(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    autoretry = plan.autoretry
    if autoretry is not None and autoretry.max_retries is None:
        return GateResult(
            "bounded",
            Status.MISS,
            f"{autoretry.describe()}: max_retries=None, so Celery retries these errors "
            "forever; set max_retries=N (N retries, then EXHAUSTED) or move to "
            "retry_on(..., attempts=N+1)",
        )
    if plan.unknown is not None:
        return GateResult("bounded", Status.MISS, f"retry window unknown: {plan.unknown}")
    if not plan.sources:
        return GateResult("bounded", Status.PASS, "no retry rules: nothing is retried")
    for source in plan.sources:
        delays = source.base_delays
        if len(delays) >= 2 and delays[-1] <= delays[0]:
            return GateResult(
                "bounded",
                Status.MISS,
                f"{source.source}: the delay does not grow ({len(delays)} retries "
                f"{format_seconds(delays[0])} apart keep hitting what is down); "
                f"{source.advice}" + _window_note(plan),
            )
    assert plan.window is not None
    expires = _expires_seconds(task)
    if expires is not None and plan.window >= expires:
        return GateResult(
            "bounded",
            Status.MISS,
            f"retry window {format_seconds(plan.window)} is longer than expires="
            f"{format_seconds(expires)}: the last retries would be revoked as expired",
        )
    attempts = "+".join(source.attempts for source in plan.sources)
    return GateResult(
        "bounded",
        Status.PASS,
        f"attempts {attempts}, worst-case retry window {format_seconds(plan.window)}",
    )


def _window_note(plan: RetryPlan) -> str:
    return "" if plan.window is None else f"; retry window {format_seconds(plan.window)}"


def _expires_seconds(task: Any) -> float | None:
    expires: Any = getattr(task, "expires", None)
    if hasattr(expires, "total_seconds"):
        return float(expires.total_seconds())
    if isinstance(expires, (int, float)) and not isinstance(expires, bool):
        return float(expires)
    return None  # none, or an absolute datetime (not a per-message lifetime)


def is_idempotent(task: Any, app_waivers: Mapping[str, str] | None = None) -> bool:
    """Declared idempotent: a key, or the ``idempotency`` gate waived as safe, by the
    task or app-wide (``reliable_waive``, ``app_waivers``)."""
    waived = {*getattr(task, "_reliable_waivers", {}), *(app_waivers or {})}
    return getattr(task, "_reliable_key", None) is not None or "idempotency" in waived


def _idempotency(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    key = getattr(task, "_reliable_key", None)
    if key is not None:
        source = key.source if isinstance(key.source, str) else "a callable"
        return GateResult("idempotency", Status.PASS, f"idempotency_key {source}")
    return GateResult(
        "idempotency",
        Status.MISS,
        "no idempotency_key: a retried or redelivered message runs the body again; declare "
        "idempotency_key='...' or waive={'idempotency': 'why running twice is safe'}",
    )


def _timeout(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    soft, hard = time_limits(task, task.app)
    if soft and hard and float(soft) > float(hard):
        # Celery refuses to publish such a task (apply_async raises ValueError), so its
        # retries and snoozes fail at the worker; typically an app-wide
        # task_soft_time_limit above one task's own time_limit.
        return GateResult(
            "timeout",
            Status.MISS,
            f"soft time limit {format_seconds(float(soft))} is above the hard "
            f"{format_seconds(float(hard))}: the soft limit never fires and Celery refuses "
            "to publish the task again (a retry or snooze raises ValueError); set "
            "timeout=N, or a soft_time_limit at most the time_limit",
        )
    if soft or hard:
        parts = []
        if soft:
            parts.append(f"soft {format_seconds(float(soft))}")
        if hard:
            parts.append(f"hard {format_seconds(float(hard))}")
        limits = "time limits: " + ", ".join(parts)
        beat = getattr(task, "_reliable_heartbeat_timeout", None)
        if beat is not None:
            return GateResult(
                "timeout", Status.PASS, f"{limits}; heartbeat_timeout {format_seconds(beat)}"
            )
        longest = float(hard or soft or 0)
        if longest > LONG_TASK_SECONDS:
            return GateResult(
                "timeout",
                Status.WARN,
                f"{limits}, and no heartbeat_timeout: a call that hangs holds its worker slot "
                f"(and its idempotency key) for up to {format_seconds(longest)} before the "
                "limit ends it; have the body call self.heartbeat() and set "
                f"heartbeat_timeout=N ({docs_url('long-tasks')})",
            )
        return GateResult("timeout", Status.PASS, limits)
    return GateResult(
        "timeout",
        Status.MISS,
        "no timeout: a call that hangs holds a worker slot forever; set timeout=N "
        "(or task_time_limit for the app)",
    )


def _delivery(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    acks_late = bool(task.acks_late)
    if is_idempotent(task, settings.waive):
        if not acks_late:
            return GateResult(
                "delivery",
                Status.MISS,
                "acks_late is off: a worker that dies mid-task loses the message; the task "
                "is idempotent, so set acks_late=True and reject_on_worker_lost=True",
            )
        if not task.reject_on_worker_lost:
            return GateResult(
                "delivery",
                Status.MISS,
                "reject_on_worker_lost is off: a killed pool process acks its message, "
                "which is lost; set reject_on_worker_lost=True",
            )
    vt = broker.visibility_timeout
    if vt is not None and settings.keepalive and broker.is_redis:
        # The worker keeps the messages it holds alive (celery_reliable.delivery.redelivery): a
        # long task or countdown is never handed to a second worker while it lives.
        return GateResult(
            "delivery",
            Status.PASS,
            f"{_acks(task)}; held messages kept alive past the {broker.transport} "
            f"visibility_timeout {format_seconds(vt)} (reliable_keepalive)",
        )
    if vt is not None:
        where = f"visibility_timeout {format_seconds(vt)} ({broker.transport})"
        if acks_late:
            _, hard = time_limits(task, task.app)
            if not hard:
                return GateResult(
                    "delivery",
                    Status.MISS,
                    f"acks_late with no hard time limit: a task running past the {where} "
                    "is handed to a second worker; set timeout=",
                )
            if float(hard) >= vt:
                return GateResult(
                    "delivery",
                    Status.MISS,
                    f"hard time limit {format_seconds(float(hard))} is not shorter than the "
                    f"{where}: a task still running is handed to a second worker; raise "
                    "broker_transport_options['visibility_timeout']",
                )
        if plan.longest_delay is not None and plan.longest_delay >= vt:
            return GateResult(
                "delivery",
                Status.MISS,
                f"longest retry delay {format_seconds(plan.longest_delay)} is not shorter "
                f"than the {where}: a worker holding the countdown hands it to a second "
                "one, which runs it too; cap the backoff or raise the visibility_timeout",
            )
    detail = _acks(task)
    if vt is not None and (acks_late or plan.longest_delay is not None):
        detail += f"; within the {broker.transport} visibility_timeout {format_seconds(vt)}"
    return GateResult("delivery", Status.PASS, detail)


def _acks(task: Any) -> str:
    if not task.acks_late:
        return "acks early (not idempotent: a crash loses the message, never runs it twice)"
    return "acks_late, reject_on_worker_lost" if task.reject_on_worker_lost else "acks_late"


def _metrics(settings: ReliableSettings) -> GateResult:
    if settings.statsd_host:
        return GateResult(
            "metrics",
            Status.PASS,
            f"StatsD {settings.statsd_host}:{settings.statsd_port}, prefix "
            f"{settings.statsd_prefix!r}",
        )
    return GateResult(
        "metrics",
        Status.MISS,
        "reliable_statsd_host is not set: no outcome counters or durations reach a dashboard",
    )


def _sentry(settings: ReliableSettings) -> GateResult:
    if not settings.sentry:
        return GateResult("sentry", Status.WARN, "reliable_sentry is False: no error reports")
    if importlib.util.find_spec("sentry_sdk") is None:
        return GateResult(
            "sentry",
            Status.WARN,
            "sentry_sdk is not installed: pip install 'celery-reliable[sentry]'",
        )
    import sentry_sdk

    if not sentry_sdk.is_initialized():
        return GateResult(
            "sentry",
            Status.WARN,
            "the Sentry SDK is not initialised when the app is loaded: call "
            "sentry_sdk.init(dsn=...) in the app's module",
        )
    return GateResult("sentry", Status.PASS, "the Sentry SDK is initialised")


_TASK_GATES: dict[str, _Gate] = {
    "classified": _classified,
    "bounded": _bounded,
    "idempotency": _idempotency,
    "timeout": _timeout,
    "delivery": _delivery,
}
_PROJECT_GATES: dict[str, Callable[[ReliableSettings], GateResult]] = {
    "metrics": _metrics,
    "sentry": _sentry,
}
assert tuple(_PROJECT_GATES) == PROJECT_GATES
assert (*_TASK_GATES, *_PROJECT_GATES) == GATES


def format_seconds(seconds: float) -> str:
    """``45s``, ``12m 30s``, ``3h 5m``, ``2d 4h``: whole units, two at most."""
    if seconds < 60:
        return f"{seconds:.3g}s" if seconds < 10 else f"{seconds:.0f}s"
    total = round(seconds)
    for unit, size, sub, sub_size in (
        ("d", 86400, "h", 3600),
        ("h", 3600, "m", 60),
        ("m", 60, "s", 1),
    ):
        if total >= size:
            whole, rest = divmod(total, size)
            part = rest // sub_size
            return f"{whole}{unit}" + (f" {part}{sub}" if part else "")
    return f"{total}s"  # pragma: no cover
