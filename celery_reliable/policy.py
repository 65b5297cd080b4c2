"""Declarations (``retry_on`` / ``discard_on`` / ``cancel_on``) and classification.

A task's declarations become a :class:`Policy`: a map from exception class to rule,
built once when the task class is built. Classifying an exception walks
``type(exc).__mro__`` and the nearest class that has a rule wins; the answer is cached
per exception type, so the hot path is one dict lookup after the first time.

Pure module: no Celery import.
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from celery_reliable.backoff import (
    Wait,
    apply_jitter_and_floor,
    exponential,
    normalize_jitter,
    normalize_wait,
)

#: ``on_exhausted`` / ``on_discard`` callbacks: called with ``(task, exc)``.
Callback = Callable[[Any, BaseException], object]

#: The attribute on a task function (or class) that holds its own declarations.
RULES_ATTR = "__reliable_rules__"

#: Default ``retry_on`` backoff: exponential from 1 s, capped at 10 min.
DEFAULT_WAIT = exponential()
#: Default ``retry_on`` attempts (Active Job's default).
DEFAULT_ATTEMPTS = 5
#: ``OutcomeEvent.rule`` of an unclassified exception retried by the app's setting.
UNCLASSIFIED_LABEL = 'reliable_unclassified="retry"'
#: ``OutcomeEvent.rule`` when the task's ``idempotency_key`` decided (DUPLICATE, a key
#: in progress elsewhere, a key reused with other arguments).
IDEMPOTENCY_LABEL = "idempotency_key"
#: The ``rule`` of a SNOOZED outcome that waited for a limit's slot (``limits=[...]``):
#: counted as ``limited``, apart from snoozes.
LIMITS_LABEL = "limits"

_T = TypeVar("_T")


def _qualified(exc_type: type[BaseException]) -> str:
    return f"{exc_type.__module__}.{exc_type.__qualname__}"


def _short(exc_type: type[BaseException]) -> str:
    return exc_type.__qualname__


def rule_label(kind: str, exc_types: Iterable[type[BaseException]]) -> str:
    """A rule's short, stable name: ``retry_on(ConnectionError, TimeoutError)``.

    Carried by each ``OutcomeEvent`` a rule decided (``event.rule``) and printed by the
    rule coverage of the test plugin; built once per rule, never per execution.
    """
    return f"{kind}({', '.join(_short(t) for t in exc_types)})"


@dataclass(frozen=True, eq=False)
class RetryRule:
    """Transient errors: retry with backoff until ``attempts`` executions failed with them."""

    exc_types: tuple[type[BaseException], ...]
    wait: Wait
    attempts: int
    jitter: float
    report: bool = False
    on_exhausted: Callback | None = None
    rule_id: str = ""
    #: Its name in ``OutcomeEvent.rule``; derived from the classes when not given.
    label: str = ""

    kind = "retry"

    def __post_init__(self) -> None:
        if not self.label:
            object.__setattr__(self, "label", rule_label("retry_on", self.exc_types))

    def describe(self) -> str:
        names = ", ".join(_short(t) for t in self.exc_types)
        return (
            f"retry_on({names}, wait={self.wait.description}, attempts={self.attempts}, "
            f"jitter={self.jitter:g}{', report=True' if self.report else ''})"
        )


@dataclass(frozen=True, eq=False)
class DiscardRule:
    """Permanent errors: stop, write a dead letter, report only when ``report=True``."""

    exc_types: tuple[type[BaseException], ...]
    report: bool = False
    on_discard: Callback | None = None
    label: str = field(init=False, default="")

    kind = "discard"

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", rule_label("discard_on", self.exc_types))

    def describe(self) -> str:
        names = ", ".join(_short(t) for t in self.exc_types)
        return f"discard_on({names}{', report=True' if self.report else ''})"


@dataclass(frozen=True, eq=False)
class CancelRule:
    """Expected conditions the job cannot fix: stop quietly, not an error."""

    exc_types: tuple[type[BaseException], ...]
    label: str = field(init=False, default="")

    kind = "cancel"

    def __post_init__(self) -> None:
        object.__setattr__(self, "label", rule_label("cancel_on", self.exc_types))

    def describe(self) -> str:
        return f"cancel_on({', '.join(_short(t) for t in self.exc_types)})"


Rule = RetryRule | DiscardRule | CancelRule


@dataclass(frozen=True)
class RetryStep:
    """One planned retry of a rule: after ``attempt`` failed, wait between the bounds."""

    attempt: int
    min_delay: float
    max_delay: float


def retry_schedule(rule: RetryRule) -> list[RetryStep]:
    """The delays of a rule's retries (attempts - 1 of them), jitter's range included,
    without an exception's ``retry_after`` (a server's word, unknown in advance).

    A ``wait`` callable is asked with a plain ``Exception``; one that needs the real
    exception raises ``ValueError`` here (the schedule cannot be known ahead).
    """
    probe = Exception("celery_reliable: planning the retry schedule")
    steps = []
    for attempt in range(1, rule.attempts):
        try:
            base = rule.wait.base_delay(attempt, probe)
        except Exception as exc:
            raise ValueError(
                f"wait {rule.wait.description} cannot be computed ahead of an exception "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        steps.append(
            RetryStep(
                attempt=attempt,
                min_delay=apply_jitter_and_floor(base, rule.jitter, rand=lambda: 0.0),
                max_delay=apply_jitter_and_floor(base, rule.jitter, rand=lambda: 1.0),
            )
        )
    return steps


def rule_id_for(exc_types: Iterable[type[BaseException]]) -> str:
    """A short id for a retry rule's attempt counter, carried in message headers.

    Derived from the classes' qualified names (not the rule's position), so reordering
    declarations in a deploy does not hand one rule's counter to another.
    """
    names = ",".join(sorted(_qualified(t) for t in exc_types))
    return hashlib.sha1(names.encode(), usedforsecurity=False).hexdigest()[:8]


def _exception_types(
    decorator: str, exc_types: Sequence[object]
) -> tuple[type[BaseException], ...]:
    if not exc_types:
        raise TypeError(f"{decorator}() needs at least one exception class")
    seen: list[type[BaseException]] = []
    for exc_type in exc_types:
        if not (isinstance(exc_type, type) and issubclass(exc_type, Exception)):
            hint = ""
            if callable(exc_type) and not isinstance(exc_type, type):
                # @retry_on written without its parentheses decorates the function.
                hint = f"; write @{decorator}(SomeError, ...) with the parentheses"
            raise TypeError(
                f"{decorator}() takes exception classes (subclasses of Exception), "
                f"got {exc_type!r}{hint}"
            )
        if exc_type in seen:
            raise ValueError(f"{decorator}() lists {exc_type.__qualname__} twice")
        seen.append(exc_type)
    return tuple(seen)


def _attempts(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(
            "attempts must be an int >= 1 (it counts executions, the first included); "
            f"got {value!r}"
        )
    return value


def _callback(name: str, value: object) -> Callback | None:
    if value is not None and not callable(value):
        raise TypeError(f"{name} must be a callable (task, exc) -> None, got {value!r}")
    return value


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def make_retry_rule(
    exc_types: Sequence[object],
    *,
    wait: object = DEFAULT_WAIT,
    attempts: object = DEFAULT_ATTEMPTS,
    jitter: object = True,
    report: object = False,
    on_exhausted: object = None,
) -> RetryRule:
    types = _exception_types("retry_on", exc_types)
    return RetryRule(
        exc_types=types,
        wait=normalize_wait(wait),
        attempts=_attempts(attempts),
        jitter=normalize_jitter(jitter),
        report=_flag("report", report),
        on_exhausted=_callback("on_exhausted", on_exhausted),
        rule_id=rule_id_for(types),
    )


def retry_on(
    *exc_types: type[BaseException],
    wait: object = DEFAULT_WAIT,
    attempts: int = DEFAULT_ATTEMPTS,
    jitter: float | bool = True,
    report: bool = False,
    on_exhausted: Callback | None = None,
) -> Callable[[_T], _T]:
    """Retry these transient errors with backoff, ``attempts`` executions in all.

    Classes listed in one call share one attempt counter; each call has its own.
    ``wait``: a strategy from :mod:`celery_reliable.backoff`, a number of seconds, or
    a callable ``(attempt, exc) -> seconds``. ``report=True`` also sends each retry to
    Sentry as a warning. ``on_exhausted(task, exc)`` runs when the attempts run out.
    """
    rule = make_retry_rule(
        exc_types,
        wait=wait,
        attempts=attempts,
        jitter=jitter,
        report=report,
        on_exhausted=on_exhausted,
    )
    return _declare(rule)


def discard_on(
    *exc_types: type[BaseException],
    report: bool = False,
    on_discard: Callback | None = None,
) -> Callable[[_T], _T]:
    """Discard the job on these permanent errors: no retry, a dead letter, state DISCARDED."""
    rule = DiscardRule(
        exc_types=_exception_types("discard_on", exc_types),
        report=_flag("report", report),
        on_discard=_callback("on_discard", on_discard),
    )
    return _declare(rule)


def cancel_on(*exc_types: type[BaseException]) -> Callable[[_T], _T]:
    """Cancel the job on these expected conditions: not an error, nothing reported."""
    return _declare(CancelRule(exc_types=_exception_types("cancel_on", exc_types)))


def _declare(rule: Rule) -> Callable[[_T], _T]:
    def decorator(target: _T) -> _T:
        if isinstance(target, type):
            declare = getattr(target, "__reliable_declare__", None)
            if declare is None:
                raise TypeError(
                    f"{rule.kind}_on decorates ReliableTask subclasses and task functions, "
                    f"not {target.__qualname__}"
                )
            declare(rule)
            return target
        if inspect.isfunction(target):
            own: list[Rule] = list(getattr(target, RULES_ATTR, ()))
            check_unique([*own, rule])
            # A fresh list each time: functools.wraps copies __dict__, and two wrappers
            # must not share (and grow) one list.
            setattr(target, RULES_ATTR, [*own, rule])
            return target
        raise TypeError(
            f"{rule.kind}_on must decorate the task function itself, below @app.task "
            f"(or a ReliableTask subclass); got {target!r}"
        )

    return decorator


def check_unique(rules: Iterable[Rule]) -> None:
    """The same exception class in two rules of one task is a declaration error."""
    owner: dict[type[BaseException], Rule] = {}
    for rule in rules:
        for exc_type in rule.exc_types:
            other = owner.get(exc_type)
            if other is not None:
                raise ValueError(
                    f"{exc_type.__qualname__} is declared twice: in {other.describe()} "
                    f"and in {rule.describe()}; one exception class takes one rule"
                )
            owner[exc_type] = rule


@dataclass(eq=False)
class Policy:
    """The effective rules of one task class: exception class -> rule."""

    by_type: Mapping[type[BaseException], Rule] = field(default_factory=dict)
    _cache: dict[type[BaseException], Rule | None] = field(default_factory=dict, repr=False)

    @classmethod
    def compose(cls, parent: Policy | None, own: Sequence[Rule]) -> Policy:
        """A subclass's policy: its parent's rules, with its own declarations on top.

        An own rule for a class replaces the parent's rule for that class (override);
        the parent's rule keeps the classes it is not overridden for.
        """
        check_unique(own)
        by_type: dict[type[BaseException], Rule] = dict(parent.by_type) if parent else {}
        for rule in own:
            for exc_type in rule.exc_types:
                by_type[exc_type] = rule
        return cls(by_type=by_type)

    def classify(self, exc: BaseException) -> Rule | None:
        """The rule of the nearest class in ``type(exc).__mro__`` that has one."""
        exc_type = type(exc)
        try:
            return self._cache[exc_type]
        except KeyError:
            pass
        found: Rule | None = None
        for klass in exc_type.__mro__:
            found = self.by_type.get(klass)
            if found is not None:
                break
        self._cache[exc_type] = found
        return found

    @property
    def rules(self) -> list[Rule]:
        """Each distinct rule once, in declaration order."""
        seen: dict[int, Rule] = {}
        for rule in self.by_type.values():
            seen.setdefault(id(rule), rule)
        return list(seen.values())

    def retry_rules(self) -> list[RetryRule]:
        return [rule for rule in self.rules if isinstance(rule, RetryRule)]


def default_retry_rule(attempts: int) -> RetryRule:
    """The bounded rule unclassified exceptions follow under ``reliable_unclassified="retry"``."""
    return RetryRule(
        exc_types=(Exception,),
        wait=normalize_wait(DEFAULT_WAIT),
        attempts=_attempts(attempts),
        jitter=normalize_jitter(True),
        rule_id="default",
        # Not a declaration of the task: the app's setting decided.
        label=UNCLASSIFIED_LABEL,
    )
