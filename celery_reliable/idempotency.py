"""Idempotency keys and payload hashes, computed from a task's bound arguments.

A key is a format string over the run function's parameters
(``"order-confirmation:{order_id}"``) or a callable ``(*args, **kwargs) -> str``. The
payload hash is a SHA-256 of the canonical JSON of the *bound* arguments, defaults
applied, so ``send(1, urgent=False)`` and ``send(1)`` are the same payload.

Pure module: no Celery, no SQLAlchemy. Everything that can be checked is checked when
the task class is built.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from celery_reliable.errors import IdempotencyKeyError, UniqueKeyError

#: Keys longer than this are shortened to a prefix and a digest (column width 255).
MAX_KEY_LENGTH = 255


def run_signature(run: Any) -> inspect.Signature:
    """The signature callers use: ``self`` removed for bound and class-based tasks."""
    function = getattr(run, "__func__", run)
    signature = inspect.signature(function)
    if isinstance(run, staticmethod):
        return signature
    params = list(signature.parameters.values())
    if params and params[0].kind in (
        inspect.Parameter.POSITIONAL_ONLY,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
    ):
        params = params[1:]
    return signature.replace(parameters=params)


def bind_arguments(
    signature: inspect.Signature, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    try:
        bound = signature.bind(*args, **kwargs)
    except TypeError as exc:
        raise IdempotencyKeyError(
            f"arguments do not fit {signature}: {exc}; a retry replays the same arguments: "
            "change the task to accept them, then retry the dead letter, or purge it (and "
            "fix the publisher)"
        ) from exc
    bound.apply_defaults()
    return dict(bound.arguments)


def _template_fields(template: str) -> list[str]:
    roots = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is None:
            continue
        root = field.split(".", 1)[0].split("[", 1)[0]
        if not root or root.isdigit():
            raise ValueError(
                f"idempotency key {template!r}: use parameter names, not positions ({{{field}}})"
            )
        roots.append(root)
    return roots


def canonical_json(value: Any) -> str:
    """Stable JSON: sorted keys, no spaces; unknown types by ``str`` (dates, UUIDs...)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str, ensure_ascii=False)


def payload_hash(arguments: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(arguments).encode()).hexdigest()


def shorten(key: str) -> str:
    if len(key) <= MAX_KEY_LENGTH:
        return key
    digest = hashlib.sha256(key.encode()).hexdigest()
    return f"{key[: MAX_KEY_LENGTH - 72]}...sha256:{digest}"


@dataclass(frozen=True)
class KeySpec:
    """How one task class computes its idempotency key; built once per class."""

    source: str | Callable[..., Any]
    signature: inspect.Signature

    @classmethod
    def build(cls, owner: str, source: object, run: Any) -> KeySpec:
        signature = run_signature(run)
        if isinstance(source, str):
            if not source.strip():
                raise ValueError(f"{owner}: idempotency_key must not be empty")
            names = set(signature.parameters)
            takes_kwargs = any(
                p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()
            )
            unknown = [f for f in _template_fields(source) if f not in names]
            if unknown and not takes_kwargs:
                raise ValueError(
                    f"{owner}: idempotency_key {source!r} names {unknown}, which are not "
                    f"parameters of the task ({', '.join(names) or 'none'})"
                )
            return cls(source, signature)
        if callable(source):
            return cls(source, signature)
        raise TypeError(
            f"{owner}: idempotency_key must be a format string over the task's "
            f"parameters or a callable (*args, **kwargs) -> str; got {source!r}"
        )

    def key_and_hash(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str, str]:
        """The key for these arguments and the payload hash. Raises IdempotencyKeyError."""
        arguments = bind_arguments(self.signature, args, kwargs)
        if isinstance(self.source, str):
            try:
                key = self.source.format_map(arguments)
            except (KeyError, AttributeError, IndexError, ValueError, TypeError) as exc:
                raise IdempotencyKeyError(
                    f"idempotency key {self.source!r}: {type(exc).__name__}: {exc}; publish "
                    "the arguments the template names, or change the template, then retry "
                    "the dead letter"
                ) from exc
        else:
            try:
                key = self.source(*args, **kwargs)
            except Exception as exc:
                raise IdempotencyKeyError(
                    f"idempotency key callable raised {type(exc).__name__}: {exc}; make it "
                    "return a str for every argument the task accepts, then retry the dead "
                    "letter"
                ) from exc
            if not isinstance(key, str) or not key:
                raise IdempotencyKeyError(
                    f"idempotency key callable returned {key!r}; it must return a non-empty str"
                )
        return shorten(key), payload_hash(arguments)


@dataclass(frozen=True)
class UniqueSpec:
    """Unique-enqueue settings of one task class: ``unique={"period": s, "keys": [...]}``."""

    period: float
    keys: tuple[str, ...] | None
    release: str
    signature: inspect.Signature

    RELEASES = ("period", "terminal")

    @classmethod
    def build(cls, owner: str, value: object, run: Any) -> UniqueSpec:
        if not isinstance(value, Mapping):
            raise TypeError(
                f"{owner}: unique must be a dict like {{'period': 60, 'keys': ['order_id']}}, "
                f"got {value!r}"
            )
        allowed = {"period", "keys", "release"}
        extra = set(value) - allowed
        if extra:
            raise TypeError(
                f"{owner}: unknown unique option(s) {sorted(extra)}; allowed: {sorted(allowed)}"
            )
        period = value.get("period")
        if (
            isinstance(period, bool)
            or not isinstance(period, (int, float))
            or not (0 < period < float("inf"))
        ):
            raise ValueError(f"{owner}: unique['period'] must be seconds > 0, got {period!r}")
        signature = run_signature(run)
        keys = value.get("keys")
        if keys is not None:
            if isinstance(keys, str) or not all(isinstance(k, str) for k in keys):
                raise TypeError(f"{owner}: unique['keys'] must be a list of argument names")
            unknown = [k for k in keys if k not in signature.parameters]
            if unknown:
                raise ValueError(
                    f"{owner}: unique['keys'] names {unknown}, which are not parameters "
                    f"of the task ({', '.join(signature.parameters) or 'none'})"
                )
            keys = tuple(keys)
        release = value.get("release", "period")
        if release not in cls.RELEASES:
            raise ValueError(
                f"{owner}: unique['release'] must be one of {cls.RELEASES}, got {release!r}"
            )
        return cls(float(period), keys, release, signature)

    def key(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> str:
        try:
            arguments = bind_arguments(self.signature, args, kwargs)
        except IdempotencyKeyError as exc:
            raise UniqueKeyError(str(exc)) from exc
        if self.keys is not None:
            arguments = {name: arguments[name] for name in self.keys}
        return shorten(canonical_json(arguments))
