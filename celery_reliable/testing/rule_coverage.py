"""Rule coverage: which declared rule each execution of a test session went through.

``pytest --reliable-rules`` prints, at the end of the session, every rule each
ReliableTask declares (``retry_on``, ``discard_on``, ``cancel_on``, Celery's
``autoretry_for``, the ``idempotency_key``'s DUPLICATE and the rules built in) and
which test first drove an execution through it; ``--reliable-rules=strict`` also fails
the session when a declared rule was never exercised. This is the "failure scenarios
tested" review gate (every transient error verified to retry, every permanent one to
discard) as a machine check.

An execution exercises the rule its ``OutcomeEvent.rule`` names (execution.py sets
it); it is heard through ``listen_outcomes``, the machinery of ``capture_outcomes``, so
it sees what that sees: ``perform_task``, ``drain``, eager ``apply()`` and workers
running in this process's threads, not a ``celery worker`` of its own process.

The tasks listed are the ReliableTasks of every app the session touched: the apps of
the tasks that sent an outcome, and the app of the ``reliable_app`` fixture.
"""

from __future__ import annotations

import threading
from collections.abc import Generator, Iterable
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pytest

from celery_reliable.outcomes import Outcome
from celery_reliable.policy import IDEMPOTENCY_LABEL
from celery_reliable.signals import OutcomeEvent
from celery_reliable.task import ReliableTask
from celery_reliable.testing.capture import listen_outcomes

#: ``--reliable-rules`` alone; ``=strict`` also fails the session on a miss.
REPORT, STRICT = "report", "strict"
#: Where an outcome sent outside any test (a session fixture) is attributed.
OUTSIDE_A_TEST = "(outside a test)"

_OUTCOME_ORDER = {outcome: n for n, outcome in enumerate(Outcome)}


@dataclass(frozen=True)
class DeclaredRule:
    """One row of the table: a rule a task declares, and what exercises it."""

    label: str
    #: Built into every ReliableTask (a store outage at claim time is retried):
    #: celery_reliable's own suite tests it, so strict does not ask for it.
    builtin: bool = False
    #: Only an execution with this outcome exercises it (the DUPLICATE of a key).
    needs: Outcome | None = None
    #: How to write the missing test, for the line strict prints.
    how: str = ""


def declared_rules(task: Any) -> list[DeclaredRule]:
    """The rows of one task, each label once: its rules as the source reads top down
    (decorators apply bottom up), ``autoretry_for``, the key, the built-in rules."""
    cls = type(task)
    builtin = {id(rule) for rule in ReliableTask._reliable_policy.rules}
    rules = cls.reliable_rules()
    ordered = [r for r in reversed(rules) if id(r) not in builtin]
    rows = [
        DeclaredRule(
            rule.label,
            how=f"write a test whose body raises {rule.exc_types[0].__qualname__}",
        )
        for rule in ordered
    ]
    autoretry = cls.reliable_autoretry()
    if autoretry is not None:
        rows.append(
            DeclaredRule(
                autoretry.label,
                how=f"write a test whose body raises {autoretry.exc_types[0].__qualname__}",
            )
        )
    if cls._reliable_key is not None:
        rows.append(
            DeclaredRule(
                IDEMPOTENCY_LABEL,
                needs=Outcome.DUPLICATE,
                how="write a test that runs it twice with one key (the second is a DUPLICATE)",
            )
        )
    rows += [DeclaredRule(r.label, builtin=True) for r in rules if id(r) in builtin]
    unique: dict[str, DeclaredRule] = {}
    for row in rows:
        unique.setdefault(row.label, row)
    return list(unique.values())


@dataclass
class Exercised:
    """What the session did with one rule of one task."""

    outcomes: set[Outcome] = field(default_factory=set)
    #: Test ids, in the order they first exercised it.
    tests: list[str] = field(default_factory=list)

    def by(self, needs: Outcome | None) -> bool:
        return bool(self.outcomes) if needs is None else needs in self.outcomes


@dataclass(frozen=True)
class Row:
    task: str
    rule: DeclaredRule
    exercised: Exercised | None

    @property
    def covered(self) -> bool:
        return self.exercised is not None and self.exercised.by(self.rule.needs)

    @property
    def missing(self) -> bool:
        """Declared by the task, never exercised: what strict fails on."""
        return not self.covered and not self.rule.builtin


class RuleCoverage:
    """The outcomes of a session, reduced to (task, rule) -> outcomes and tests.

    Keeps no event (their exceptions hold frames): one entry per rule exercised.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        #: The test running now; outcomes from other threads count for it too.
        self.current_test: str | None = None
        self._tasks: dict[str, Any] = {}
        self._apps: dict[int, Any] = {}
        self._heard: dict[tuple[str, str], Exercised] = {}

    def hear(self, event: OutcomeEvent) -> None:
        task = event.task
        name = str(task.name)
        test = self.current_test or OUTSIDE_A_TEST
        with self._lock:
            self._tasks.setdefault(name, task)
            app = getattr(task, "app", None)
            if app is not None:
                self._apps.setdefault(id(app), app)
            if event.rule is None:
                return
            exercised = self._heard.setdefault((name, event.rule), Exercised())
            exercised.outcomes.add(event.outcome)
            if test not in exercised.tests:
                exercised.tests.append(test)

    def add_app(self, app: Any) -> None:
        with self._lock:
            self._apps.setdefault(id(app), app)

    def rows(self) -> list[Row]:
        """Every declared rule of every ReliableTask of the apps seen, by task name."""
        with self._lock:
            tasks = dict(self._tasks)
            apps = list(self._apps.values())
            heard = dict(self._heard)
        for app in apps:
            for name, task in list(app.tasks.items()):
                if isinstance(task, ReliableTask):
                    tasks.setdefault(name, task)
        rows = []
        for name in sorted(tasks):
            # Never empty: every ReliableTask has the built-in rules.
            for rule in declared_rules(tasks[name]):
                rows.append(Row(name, rule, heard.get((name, rule.label))))
        return rows


def table(rows: Iterable[Row]) -> list[str]:
    """The table's lines: per task, each rule, exercised or not, and by which test."""
    rows = list(rows)
    width = max((len(row.rule.label) for row in rows), default=0)
    outcomes_width = max(
        (len(_outcomes(row.exercised)) for row in rows if row.exercised is not None),
        default=0,
    )
    lines: list[str] = []
    task = None
    for row in rows:
        if row.task != task:
            task = row.task
            lines.append(task)
        mark = "yes" if row.covered else ("-" if row.rule.builtin else "NO")
        text = f"  {mark:<3}  {row.rule.label:<{width}}"
        if row.exercised is not None:
            text += f"  {_outcomes(row.exercised):<{outcomes_width}}  {_tests(row.exercised)}"
            if not row.covered and row.rule.needs is not None:
                # The key snoozed or refused a run, but no run was a DUPLICATE.
                text += f"; never {row.rule.needs.value}"
        elif row.rule.builtin:
            text += "  built in, not required"
        else:
            text += "  never exercised"
        lines.append(text.rstrip())
    return lines


def misses(rows: Iterable[Row]) -> list[str]:
    """One line per declared rule never exercised, saying how to fix it."""
    return [
        f"{row.task}: {row.rule.label} was never exercised: {row.rule.how}"
        for row in rows
        if row.missing
    ]


def _outcomes(exercised: Exercised) -> str:
    return ", ".join(o.value for o in sorted(exercised.outcomes, key=_OUTCOME_ORDER.__getitem__))


def _tests(exercised: Exercised) -> str:
    first, *more = exercised.tests
    return f"{first} (+{len(more)} more)" if more else first


class RuleCoveragePlugin:
    """The pytest side: registered by ``plugin.py`` when ``--reliable-rules`` is given."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.coverage = RuleCoverage()
        self._listening = ExitStack()
        self._rows: list[Row] | None = None

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self._listening.enter_context(listen_outcomes(self.coverage.hear, "rule_coverage"))

    @pytest.hookimpl(wrapper=True)
    def pytest_runtest_protocol(self, item: pytest.Item) -> Generator[None, object, object]:
        self.coverage.current_test = item.nodeid
        try:
            return (yield)
        finally:
            self.coverage.current_test = None

    @pytest.hookimpl(wrapper=True)
    def pytest_fixture_setup(
        self, fixturedef: pytest.FixtureDef[Any], request: pytest.FixtureRequest
    ) -> Generator[None, object, object]:
        value = yield
        if fixturedef.argname == "reliable_app":
            # The app under test counts as touched even if no test ran one of its tasks.
            self.coverage.add_app(value)
        return value

    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self._listening.close()
        if exitstatus not in (pytest.ExitCode.OK, pytest.ExitCode.TESTS_FAILED):
            return  # interrupted, or a usage error: nothing to judge
        self._rows = self.coverage.rows()
        if self.mode == STRICT and misses(self._rows) and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        rows = self._rows
        if rows is None:
            return
        declared = [row for row in rows if not row.rule.builtin]
        covered = sum(row.covered for row in declared)
        terminalreporter.write_sep(
            "=", f"reliable rules: {covered} of {len(declared)} declared rules exercised"
        )
        for line in table(rows):
            terminalreporter.write_line(line)
        if self.mode == STRICT:
            for line in misses(rows):
                terminalreporter.write_line(f"FAILED reliable rules: {line}", red=True)
