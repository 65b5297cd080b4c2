"""The limits a task declares, checked when its class is built, compiled once per class.

``concurrency(n, key=None)``: at most ``n`` executions holding the same rendered key run
at once, across every worker. ``rate(n, per, key=None)``: at most ``n`` starts in any
window of ``per`` seconds. ``key`` is a format string over the task's parameters, like
``idempotency_key`` (default: the task's name); the same rendered string in two tasks
is one limit. Pure module: no Celery, no Redis, no SQLAlchemy.
"""

from __future__ import annotations

import inspect
import math
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from celery_reliable.errors import LimitKeyError
from celery_reliable.idempotency import run_signature, shorten


@dataclass(frozen=True)
class Limit:
    """One declared limit: ``n`` and the key template (None: the task's name)."""

    kind: ClassVar[str] = ""
    n: int
    key: str | None

    def describe(self) -> str:
        key = "" if self.key is None else f", key={self.key!r}"
        return f"{self.kind}({self.n}{key})"


@dataclass(frozen=True)
class Concurrency(Limit):
    """At most ``n`` executions with this key running at once."""

    kind: ClassVar[str] = "concurrency"


@dataclass(frozen=True)
class Rate(Limit):
    """At most ``n`` starts with this key in any window of ``per`` seconds."""

    kind: ClassVar[str] = "rate"
    per: float = 1.0

    def describe(self) -> str:
        key = "" if self.key is None else f", key={self.key!r}"
        return f"rate({self.n}, per={self.per:g}{key})"


def _count(name: str, n: object) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"{name}: n must be a whole number >= 1, got {n!r}")
    return n


def _key(name: str, key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key.strip():
        raise ValueError(
            f"{name}: key must be a non-empty format string over the task's parameters "
            f"(or None for the task's name), got {key!r}"
        )
    return key


def concurrency(n: int, key: str | None = None) -> Concurrency:
    """At most ``n`` executions holding the same rendered ``key`` run at once, across
    every worker (``key``: a format string over the task's arguments; None: the task)."""
    return Concurrency(_count("concurrency", n), _key("concurrency", key))


def rate(n: int, per: float, key: str | None = None) -> Rate:
    """At most ``n`` starts with the same rendered ``key`` in any window of ``per``
    seconds, across every worker (a sliding window: see docs/limits.md)."""
    count = _count("rate", n)
    if isinstance(per, bool) or not isinstance(per, (int, float)) or not math.isfinite(per):
        raise ValueError(f"rate: per must be a number of seconds > 0, got {per!r}")
    if per <= 0:
        raise ValueError(f"rate: per must be a number of seconds > 0, got {per!r}")
    return Rate(count, _key("rate", key), float(per))


def _fields(template: str) -> list[str]:
    roots = []
    for _, name, _, _ in string.Formatter().parse(template):
        if name is None:
            continue
        root = name.split(".", 1)[0].split("[", 1)[0]
        roots.append(root)
    return roots


@dataclass(frozen=True)
class BoundLimit:
    """One limit of one task class: its Redis/SQL name is ``kind:rendered key``."""

    limit: Limit
    template: str
    #: The key needs no argument: rendered once, here.
    fixed: str | None

    def render(self, arguments: Mapping[str, Any]) -> str:
        if self.fixed is not None:
            return self.fixed
        try:
            key = self.template.format_map(arguments)
        except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
            raise LimitKeyError(
                f"{self.limit.describe()}: key {self.template!r}: {type(exc).__name__}: {exc}; "
                "publish the arguments the key names, or change the key"
            ) from exc
        return shorten(f"{self.limit.kind}:{key}")


@dataclass(frozen=True)
class TaskLimits:
    """A task class's limits, compiled when the class is built."""

    limits: tuple[BoundLimit, ...]
    signature: inspect.Signature
    #: Every key is fixed: nothing to bind per execution.
    all_fixed: bool

    @property
    def has_concurrency(self) -> bool:
        return any(isinstance(b.limit, Concurrency) for b in self.limits)

    def named(self, task_name: str) -> TaskLimits:
        """The limits with no key take the task's name, once it is final (a class-based
        task is named when it is registered, after its class is built)."""
        limits = tuple(
            BoundLimit(b.limit, task_name, shorten(f"{b.limit.kind}:{task_name}"))
            if b.limit.key is None
            else b
            for b in self.limits
        )
        return TaskLimits(limits, self.signature, self.all_fixed)

    @classmethod
    def build(cls, owner: str, task_name: str, value: object, run: Any) -> TaskLimits | None:
        """``limits=[...]`` checked: a list of ``concurrency``/``rate``, each key naming
        parameters of the task. Raises ValueError/TypeError at import."""
        if value is None:
            return None
        if isinstance(value, Limit):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise TypeError(
                f"{owner}: limits must be a list of concurrency(...) / rate(...), got {value!r}"
            )
        if not value:
            return None
        signature = run_signature(run)
        names = set(signature.parameters)
        takes_kwargs = any(
            p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
        )
        bound: list[BoundLimit] = []
        seen: set[tuple[str, str]] = set()
        for limit in value:
            if not isinstance(limit, Limit):
                raise TypeError(
                    f"{owner}: limits takes concurrency(...) and rate(...) from "
                    f"celery_reliable.limits, got {limit!r}"
                )
            template = limit.key if limit.key is not None else task_name
            fields = _fields(template) if limit.key is not None else []
            positional = [f for f in fields if not f or f.isdigit()]
            if positional:
                raise ValueError(
                    f"{owner}: {limit.describe()}: use parameter names in the key, not positions"
                )
            unknown = [f for f in fields if f not in names]
            if unknown and not takes_kwargs:
                raise ValueError(
                    f"{owner}: {limit.describe()}: the key names {unknown}, which are not "
                    f"parameters of the task ({', '.join(sorted(names)) or 'none'})"
                )
            if (limit.kind, template) in seen:
                raise ValueError(
                    f"{owner}: two {limit.kind} limits with the key {template!r}: keep one"
                )
            seen.add((limit.kind, template))
            fixed = shorten(f"{limit.kind}:{template}") if not fields else None
            bound.append(BoundLimit(limit, template, fixed))
        return cls(tuple(bound), signature, all(b.fixed is not None for b in bound))

    def keys(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[str]:
        """The rendered key of each limit, for these arguments (LimitKeyError)."""
        if self.all_fixed:
            return [b.fixed for b in self.limits]  # type: ignore[misc]
        try:
            bound = self.signature.bind(*args, **kwargs)
        except TypeError as exc:
            raise LimitKeyError(f"limits: arguments do not fit {self.signature}: {exc}") from exc
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        return [b.render(arguments) for b in self.limits]
