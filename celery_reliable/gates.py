"""Production-readiness gates: the audit behind ``celery reliable check``.

Each ReliableTask of an app is held to the gates job teams check by hand before a job
ships (see ``options.GATES``): errors classified, retries bounded with backoff,
idempotency decided, a timeout, safe delivery, metrics and error reports wired.
:func:`check` returns the findings as data, so a project's own test can assert on
them and the CLI and web view only render them::

    from celery_reliable.gates import check
    assert check(app).passed, check(app).misses()

Reads the app's configuration and task classes only: no broker, no store.
"""

from __future__ import annotations

import difflib
import enum
import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from celery import Celery

from celery_reliable.celery_internals import time_limits
from celery_reliable.config import ReliableSettings, settings_for
from celery_reliable.errors import UnknownTask
from celery_reliable.options import GATES
from celery_reliable.policy import RULES_ATTR, RetryRule, RetryStep, Rule, retry_schedule
from celery_reliable.redelivery import REDIS_TRANSPORTS
from celery_reliable.task import ReliableTask

#: Brokers that hand an unacknowledged message to another consumer after a timeout,
#: with kombu's default ``visibility_timeout`` for each (seconds).
VISIBILITY_TIMEOUT_BROKERS = {
    "redis": 3600.0,
    "rediss": 3600.0,
    "sentinel": 3600.0,
    "sqs": 1800.0,
    "pgmq": 1800.0,
}


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

    @property
    def failed(self) -> bool:
        return self.status is Status.MISS

    def to_dict(self) -> dict[str, str]:
        return {"gate": self.gate, "status": self.status.value, "reason": self.reason}


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
    def passed(self) -> bool:
        return not any(result.failed for result in self.gates)

    def gate(self, name: str) -> GateResult:
        for result in self.gates:
            if result.gate == name:
                return result
        raise KeyError(f"no gate {name!r}; the gates are {', '.join(GATES)}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "reliable_task": self.reliable,
            "passed": self.passed,
            "retry_window": self.retry_window,
            "gates": {
                result.gate: {"status": result.status.value, "reason": result.reason}
                for result in self.gates
            },
        }


@dataclass(frozen=True)
class Findings:
    """The audit of an app: one :class:`TaskAudit` per task, by task name."""

    tasks: tuple[TaskAudit, ...]
    #: The app's own tasks that are plain Celery tasks (not audited).
    not_reliable: tuple[str, ...] = field(default=())

    @property
    def passed(self) -> bool:
        return all(audit.passed for audit in self.tasks)

    def misses(self) -> list[tuple[str, GateResult]]:
        """``(task, result)`` for every unwaived miss: what makes ``check`` exit 1."""
        return [(a.task, r) for a in self.tasks for r in a.gates if r.failed]

    def task(self, name: str) -> TaskAudit:
        for audit in self.tasks:
            if audit.task == name:
                return audit
        raise UnknownTask(f"no audited task {name!r}")

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "gates": list(GATES),
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
    audits = tuple(
        audit_task(instance, settings, broker) for _, instance in sorted(audited.items())
    )
    return Findings(tasks=audits, not_reliable=tuple(sorted(plain)) if task is None else ())


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
        elif not name.startswith("celery."):
            plain.append(name)
    return audited, plain


def unknown_task_message(name: str, audited: Mapping[str, Any], plain: list[str]) -> str:
    if name in plain:
        return f"task {name!r} is not a ReliableTask: add base=ReliableTask to audit it"
    close = difflib.get_close_matches(name, list(audited), n=1, cutoff=0.6)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted(audited)) or "none"
    return f"no task named {name!r}{hint} (the app's ReliableTasks: {known})"


@dataclass(frozen=True)
class BrokerFacts:
    """What the ``delivery`` gate needs to know of the broker."""

    transport: str
    #: Seconds before an unacknowledged message goes to another consumer; None for
    #: brokers without one (RabbitMQ holds it until the connection closes).
    visibility_timeout: float | None

    @classmethod
    def of(cls, app: Celery) -> BrokerFacts:
        # The consumer's side holds unacknowledged messages: the read URL.
        url = app.conf.broker_read_url or app.conf.broker_url or "amqp://"
        if isinstance(url, (list, tuple)):
            url = url[0] if url else "amqp://"
        first = str(url).split(";", 1)[0]
        scheme = first.split("://", 1)[0] if "://" in first else first
        transport = scheme.split("+", 1)[0].lower()
        default = VISIBILITY_TIMEOUT_BROKERS.get(transport)
        if default is None:
            return cls(transport, None)
        options = app.conf.broker_transport_options or {}
        value = options.get("visibility_timeout", default)
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            seconds = default
        return cls(transport, seconds)


def audit_task(task: Any, settings: ReliableSettings, broker: BrokerFacts) -> TaskAudit:
    """One task against every gate, its waivers applied."""
    reliable = isinstance(task, ReliableTask)
    plan = RetryPlan.of(task, settings) if reliable else RetryPlan((), (), None, None)
    waivers: Mapping[str, str] = getattr(task, "_reliable_waivers", {}) if reliable else {}
    results = []
    for gate in GATES:
        result = _GATES[gate](task, settings, broker, plan)
        waiver = waivers.get(gate)
        if waiver is not None:
            if result.status is Status.PASS:
                result = GateResult(gate, Status.PASS, f"{result.reason} (waiver not needed)")
            else:
                result = GateResult(gate, Status.WAIVED, waiver)
        results.append(result)
    return TaskAudit(
        task=task.name, reliable=reliable, gates=tuple(results), retry_window=plan.window
    )


@dataclass(frozen=True)
class RetryPlan:
    """The retry rules of a task and the delays they can produce."""

    rules: tuple[RetryRule, ...]
    #: Each rule's delays (``retry_schedule``), in the order of ``rules``.
    steps: tuple[tuple[RetryStep, ...], ...]
    #: Sum of every retry's longest delay; None if a wait cannot be computed ahead.
    window: float | None
    #: The longest single delay (the largest countdown a retry publishes).
    longest_delay: float | None
    #: Why the delays are unknown, when they are.
    unknown: str | None = None

    @classmethod
    def of(cls, task: Any, settings: ReliableSettings) -> RetryPlan:
        rules = tuple(
            r for r in declared_rules(task) if isinstance(r, RetryRule)
        ) + _unclassified_rules(settings)
        if not rules:
            return cls((), (), None, None)
        try:
            steps = tuple(tuple(retry_schedule(rule)) for rule in rules)
        except ValueError as exc:
            return cls(rules, (), None, None, unknown=str(exc))
        delays = [step.max_delay for rule_steps in steps for step in rule_steps]
        return cls(rules, steps, sum(delays), max(delays, default=0.0))


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
    rules = declared_rules(task)
    if not isinstance(task, ReliableTask):
        return GateResult(
            "classified",
            Status.MISS,
            "declares retry_on/discard_on/cancel_on but is not a ReliableTask, so they do "
            "nothing: add base=ReliableTask (a worker refuses to start like this)",
        )
    if rules:
        kinds = sorted({f"{rule.kind}_on" for rule in rules})
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


def _bounded(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
    if plan.unknown is not None:
        return GateResult("bounded", Status.MISS, f"retry window unknown: {plan.unknown}")
    if not plan.rules:
        return GateResult("bounded", Status.PASS, "no retry rules: nothing is retried")
    for rule, steps in zip(plan.rules, plan.steps, strict=True):
        if len(steps) >= 2 and steps[-1].min_delay <= steps[0].min_delay:
            return GateResult(
                "bounded",
                Status.MISS,
                f"{rule.describe()}: the delay does not grow ({len(steps)} retries "
                f"{format_seconds(steps[0].min_delay)} apart keep hitting what is down); "
                "use exponential() or polynomial()" + _window_note(plan),
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
    attempts = "+".join(str(rule.attempts) for rule in plan.rules)
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


def is_idempotent(task: Any) -> bool:
    """Declared idempotent: a key, or the ``idempotency`` gate waived as safe."""
    return getattr(task, "_reliable_key", None) is not None or "idempotency" in getattr(
        task, "_reliable_waivers", {}
    )


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
    if soft or hard:
        parts = []
        if soft:
            parts.append(f"soft {format_seconds(float(soft))}")
        if hard:
            parts.append(f"hard {format_seconds(float(hard))}")
        return GateResult("timeout", Status.PASS, "time limits: " + ", ".join(parts))
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
    if is_idempotent(task):
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
    if vt is not None and settings.keepalive and broker.transport in REDIS_TRANSPORTS:
        # The worker keeps the messages it holds alive (celery_reliable.redelivery): a
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


def _metrics(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
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


def _sentry(
    task: Any, settings: ReliableSettings, broker: BrokerFacts, plan: RetryPlan
) -> GateResult:
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


_GATES: dict[str, _Gate] = {
    "classified": _classified,
    "bounded": _bounded,
    "idempotency": _idempotency,
    "timeout": _timeout,
    "delivery": _delivery,
    "metrics": _metrics,
    "sentry": _sentry,
}
assert tuple(_GATES) == GATES


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
