"""Typed settings read from ``app.conf`` (Celery style: lowercase ``reliable_*`` keys).

Read once per app, on first use, and cached on the app: the hot path never parses
configuration. A ``reliable_*`` key that is not one of ours (``reliable_unclasified``)
is an error with a did-you-mean, not a silently ignored typo.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from celery import Celery
from celery.exceptions import ImproperlyConfigured

from celery_reliable.docs import docs_url
from celery_reliable.options import check_waive
from celery_reliable.policy import RetryRule, default_retry_rule

#: Every setting, with its default. Documented in docs/configuration.md.
DEFAULTS: dict[str, Any] = {
    "reliable_database_url": "sqlite:///celery_reliable.sqlite3",
    "reliable_statsd_host": None,
    "reliable_statsd_port": 8125,
    "reliable_statsd_prefix": "celery",
    "reliable_statsd_tags": None,
    "reliable_unclassified": "fail",
    "reliable_unclassified_attempts": 5,
    "reliable_receipt_ttl": 7 * 24 * 3600,
    "reliable_dead_letter_redact": False,
    "reliable_queue_depth_interval": 10.0,
    "reliable_log_outcomes": True,
    "reliable_sentry": True,
    "reliable_prune_interval": 3600.0,
    "reliable_history": True,
    "reliable_history_retention": 7 * 24 * 3600,
    "reliable_history_interval": 5.0,
    "reliable_orphan_rescue": True,
    "reliable_rescue_interval": 2.0,
    "reliable_keepalive": True,
    "reliable_atomic_fetch": True,
    "reliable_web_auth": None,
    "reliable_web_read_only_auth": None,
    "reliable_waive": None,
    "reliable_limits_url": None,
    "reliable_outbox": False,
    "reliable_outbox_relay": True,
    "reliable_outbox_poll_interval": 0.2,
    "reliable_beat_catch_up": 3600.0,
    "reliable_batch_group_endings": True,
}

UNCLASSIFIED_MODES = ("fail", "retry")
STATSD_TAG_STYLES = (None, "dogstatsd")

_CACHE_ATTR = "_reliable_settings"


@dataclass(frozen=True)
class ReliableSettings:
    database_url: str | None
    statsd_host: str | None
    statsd_port: int
    statsd_prefix: str
    statsd_tags: str | None
    unclassified: str
    unclassified_attempts: int
    receipt_ttl: float
    #: True: no task's dead letters keep arguments; else the names of those that don't.
    dead_letter_redact: bool | frozenset[str]
    queue_depth_interval: float
    log_outcomes: bool
    sentry: bool
    prune_interval: float
    #: Outcome counts per task, queue and minute kept in the store (``report``, web).
    history: bool
    history_retention: float
    history_interval: float
    #: Redis brokers: a worker re-queues messages whose worker died (their unacked
    #: entry older than the visibility timeout), every ``rescue_interval`` seconds.
    orphan_rescue: bool
    rescue_interval: float
    #: Redis brokers: a worker keeps the unacked entries of the messages it holds
    #: fresh, so that no other worker takes them while it lives.
    keepalive: bool
    atomic_fetch: bool
    #: The web view's HTTP basic credentials, ``(user, password)`` pairs: those who may
    #: act (retry, purge, release), and those who may only look.
    web_auth: tuple[tuple[str, str], ...]
    web_read_only_auth: tuple[tuple[str, str], ...]
    #: The rule unclassified exceptions follow; None under "fail".
    unclassified_rule: RetryRule | None
    #: The settings the app set itself (the others are defaults): a feature set on
    #: purpose whose library is missing stops the worker, a default one is just off.
    explicit: frozenset[str] = frozenset()
    #: ``reliable_waive``: gates of ``celery reliable check`` waived for every task,
    #: gate -> reason; a task's own ``waive=`` wins for that task.
    waive: Mapping[str, str] = field(default_factory=dict)
    #: Where ``limits=[...]`` keep their slots: a Redis URL, ``"store"`` (the SQL
    #: store), or None: the broker's Redis (``limits/slots.py`` refuses other brokers).
    limits_url: str | None = None
    #: Django: a ReliableTask's ``delay()`` / ``apply_async()`` inside
    #: ``transaction.atomic()`` is written to the outbox (``outbox/django.py``).
    outbox: bool = False
    #: A worker runs a relay of the outbox in a thread (when it has a store).
    outbox_relay: bool = True
    #: Seconds between a relay's looks at the outbox when nothing wakes it.
    outbox_poll_interval: float = 0.2
    #: ``celery_reliable.beat:Scheduler``: a slot missed while every beat was down is
    #: published late if it is at most this many seconds old, else skipped (0: never).
    beat_catch_up: float = 3600.0
    #: Redis brokers: a batch member's ending is pushed to the broker's Redis and
    #: counted in the store in groups by a thread of every worker (``batches/tally.py``);
    #: False, or another broker: each ending is one store transaction before the ack.
    batch_group_endings: bool = True

    @classmethod
    def from_mapping(
        cls, values: Mapping[str, Any], spelled: Mapping[str, str] | None = None
    ) -> ReliableSettings:
        """``values`` by our lowercase names; ``spelled``: how the user wrote each one
        (``CELERY_RELIABLE_...`` under Django's namespace), for error messages."""
        merged = _Values({**DEFAULTS, **values}, spelled or {})
        unknown = set(values) - set(DEFAULTS)
        if unknown:
            raise ImproperlyConfigured(_unknown_message(sorted(unknown), spelled or {}))
        unclassified = merged["reliable_unclassified"]
        if unclassified not in UNCLASSIFIED_MODES:
            raise ImproperlyConfigured(
                f"{merged.written('reliable_unclassified')} must be one of "
                f"{UNCLASSIFIED_MODES}, got {unclassified!r}"
            )
        tags = merged["reliable_statsd_tags"]
        if tags not in STATSD_TAG_STYLES:
            raise ImproperlyConfigured(
                f"{merged.written('reliable_statsd_tags')} must be None or 'dogstatsd', "
                f"got {tags!r}"
            )
        return cls(
            database_url=_optional_str("reliable_database_url", merged),
            statsd_host=_optional_str("reliable_statsd_host", merged),
            statsd_port=_int("reliable_statsd_port", merged, low=1, high=65535),
            statsd_prefix=_str("reliable_statsd_prefix", merged),
            statsd_tags=tags,
            unclassified=unclassified,
            unclassified_attempts=_int("reliable_unclassified_attempts", merged, low=1),
            receipt_ttl=_seconds("reliable_receipt_ttl", merged),
            dead_letter_redact=_redact("reliable_dead_letter_redact", merged),
            queue_depth_interval=_seconds("reliable_queue_depth_interval", merged),
            log_outcomes=_bool("reliable_log_outcomes", merged),
            sentry=_bool("reliable_sentry", merged),
            prune_interval=_seconds("reliable_prune_interval", merged),
            history=_bool("reliable_history", merged),
            history_retention=_seconds("reliable_history_retention", merged),
            history_interval=_seconds("reliable_history_interval", merged),
            orphan_rescue=_bool("reliable_orphan_rescue", merged),
            rescue_interval=_seconds("reliable_rescue_interval", merged),
            keepalive=_bool("reliable_keepalive", merged),
            atomic_fetch=_bool("reliable_atomic_fetch", merged),
            web_auth=_credentials("reliable_web_auth", merged),
            web_read_only_auth=_credentials("reliable_web_read_only_auth", merged),
            unclassified_rule=None,
            explicit=frozenset(values),
            waive=_waive("reliable_waive", merged),
            limits_url=_limits_url(merged),
            outbox=_bool("reliable_outbox", merged),
            outbox_relay=_bool("reliable_outbox_relay", merged),
            outbox_poll_interval=_seconds("reliable_outbox_poll_interval", merged),
            beat_catch_up=_beat_catch_up(merged),
            batch_group_endings=_bool("reliable_batch_group_endings", merged),
        ).with_unclassified_rule()

    def redacts(self, task_name: str) -> bool:
        redact = self.dead_letter_redact
        return redact if isinstance(redact, bool) else task_name in redact

    def with_unclassified_rule(self) -> ReliableSettings:
        rule = None
        if self.unclassified == "retry":
            rule = default_retry_rule(self.unclassified_attempts)
        return replace(self, unclassified_rule=rule)


def _beat_catch_up(merged: _Values) -> float:
    value = merged["reliable_beat_catch_up"]
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < math.inf:
        raise ImproperlyConfigured(
            f"{merged.written('reliable_beat_catch_up')} must be a number of seconds >= 0, "
            f"got {value!r}"
        )
    return float(value)


def _limits_url(merged: _Values) -> str | None:
    url = _optional_str("reliable_limits_url", merged)
    if url is None or url == "store" or url.split("://", 1)[0] in ("redis", "rediss", "unix"):
        return url
    raise ImproperlyConfigured(
        f"{merged.written('reliable_limits_url')} must be a Redis URL (redis://...), "
        f"'store' (the SQL store), or None (the broker's Redis), got {url!r}"
    )


def settings_for(app: Celery) -> ReliableSettings:
    """The app's settings, read and validated once, then cached on the app."""
    cached: ReliableSettings | None = app.__dict__.get(_CACHE_ATTR)
    if cached is None:
        values, spelled = _reliable_keys(app)
        cached = ReliableSettings.from_mapping(values, spelled)
        setattr(app, _CACHE_ATTR, cached)
    return cached


def refuse_a_changed_database_url(app: Celery) -> None:
    """Settings are read once per app: a ``reliable_database_url`` changed after that
    would be ignored, and every write would still go to the first database. Raise
    instead. Read the way ``settings_for`` reads it (every spelling, every namespace);
    called where a test changes settings (eager ``apply()``, ``perform_task``,
    ``drain``), never on a worker's per-execution path."""
    cached: ReliableSettings | None = app.__dict__.get(_CACHE_ATTR)
    if cached is None:
        return
    values, spelled = _reliable_keys(app)
    now = {**DEFAULTS, **values}["reliable_database_url"]
    now = None if now in (None, "") else now
    if now != cached.database_url:
        name = spelled.get("reliable_database_url", "reliable_database_url")
        raise ImproperlyConfigured(
            f"{name} changed from {cached.database_url!r} to {now!r} after "
            "the app first used its settings; celery_reliable reads them once per app: "
            "set it before the first use, or call celery_reliable.testing.reset(app) "
            "after changing it (the reliable_db fixture does)"
        )


def as_written(app: Celery, name: str) -> str:
    """Our setting ``name`` (``reliable_database_url``) as the app's configuration
    writes it, for messages: ``CELERY_RELIABLE_DATABASE_URL`` under Django's namespace,
    whether the app set it or left it at its default."""
    _, spelled = _reliable_keys(app)
    if name in spelled:
        return spelled[name]
    prefix = app.conf.prefix
    return f"{prefix}{name}".upper() if prefix else name


def forget_settings(app: Celery) -> None:
    """Drop the cached settings (tests that change ``app.conf`` after first use)."""
    app.__dict__.pop(_CACHE_ATTR, None)


def _reliable_keys(app: Celery) -> tuple[dict[str, Any], dict[str, str]]:
    conf = app.conf
    conf.finalize()
    prefix = (conf.prefix or "").lower()
    found: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key in list(conf.keys()):
        if not isinstance(key, str):
            continue
        name = key.lower()
        if prefix and name.startswith(prefix):
            name = name[len(prefix) :]
        elif prefix and key != name:
            # Under a namespace (Django's CELERY_), an upper-case key without the
            # prefix is the host's own setting (RELIABLE_API_TOKEN), not ours.
            continue
        if name.startswith("reliable_"):
            found[name] = conf[key]
            spelled[name] = key
    return found, spelled


#: How far a key's start may be from ``reliable_`` (or ``CELERY_RELIABLE_`` under
#: Django's namespace), in edits (a letter added, dropped or changed, two letters
#: swapped), to be taken for a misspelling of it: ``RELAIBLE_`` is one edit away,
#: ``RELEASE_`` three.
_NEAR_MISS_EDITS = 2
#: How close the rest of such a key must be to one of our settings (difflib ratio).
_NEAR_MISS_SETTING = 0.8
_OURS = "reliable_"


def misspelt_keys(app: Celery) -> list[tuple[str, str]]:
    """Keys meant as ours that are never read, because their prefix is misspelt
    (``CELERY_RELAIBLE_UNCLASSIFIED``, ``reliabel_statsd_host``) or Django's namespace
    is missing (``RELIABLE_DATABASE_URL``): ``(key as written, key meant)`` pairs.

    Such a key is no error (it is not ours: the host may have settings of its own), but
    the feature it sets silently stays off. Only a near miss whose rest is one of our
    settings counts, so that the host's own settings (``CELERY_RESULT_BACKEND``,
    ``RELIABLE_API_TOKEN``) never do.
    """
    conf = app.conf
    conf.finalize()
    namespace = (conf.prefix or "").lower()
    _, spelled = _reliable_keys(app)
    read = set(spelled.values())
    found = []
    for key in list(conf.keys()):
        if isinstance(key, str) and key not in read:
            meant = _meant(key, namespace)
            if meant is not None:
                found.append((key, meant))
    return sorted(found)


def _meant(key: str, namespace: str) -> str | None:
    """The key ``key`` was meant to be, as ``_reliable_keys`` would read it, or None."""
    name = key.lower()
    if namespace and name.startswith(namespace):
        # CELERY_RELAIBLE_...: the namespace is right, our prefix is not.
        kept, rest, prefix = key[: len(namespace)], name[len(namespace) :], _OURS
    elif namespace and key != name:
        if name in DEFAULTS:
            # RELIABLE_DATABASE_URL beside CELERY_BROKER_URL: the namespace is missing.
            return _cased(key, namespace + name)
        # CELERYRELIABLE_..., CELERY_RELAIBLE_... under another namespace's spelling.
        kept, rest, prefix = "", name, namespace + _OURS
    else:
        kept, rest, prefix = "", name, _OURS
    if rest.startswith(prefix):
        return None  # ours: read, or an unknown-setting error with a did-you-mean
    suffixes = [setting[len(_OURS) :] for setting in DEFAULTS]
    best: tuple[int, float, str] | None = None
    for cut in range(len(prefix) - _NEAR_MISS_EDITS, len(prefix) + _NEAR_MISS_EDITS + 1):
        edits = _edits(rest[:cut], prefix)
        close = difflib.get_close_matches(rest[cut:], suffixes, n=1, cutoff=_NEAR_MISS_SETTING)
        if edits == 0 or edits > _NEAR_MISS_EDITS or not close:
            continue
        similarity = difflib.SequenceMatcher(None, rest[cut:], close[0]).ratio()
        if best is None or (edits, -similarity) < (best[0], -best[1]):
            best = (edits, similarity, prefix + close[0])
    return None if best is None else kept + _cased(key, best[2])


def _cased(written: str, name: str) -> str:
    return name.upper() if written.isupper() else name


def _edits(a: str, b: str) -> int:
    """Edit distance with adjacent transpositions (optimal string alignment): the
    typos of a hand on a keyboard, where ``RELAIBLE`` is one edit from ``RELIABLE``."""
    previous: list[int] = []
    row = list(range(len(b) + 1))
    for i, char in enumerate(a, 1):
        before, previous, row = previous, row, [i] + [0] * len(b)
        for j, other in enumerate(b, 1):
            row[j] = min(
                previous[j] + 1,
                row[j - 1] + 1,
                previous[j - 1] + (char != other),
            )
            if i > 1 and j > 1 and char == b[j - 2] and a[i - 2] == other:
                row[j] = min(row[j], before[j - 2] + 1)
    return row[-1]


class _Values(dict[str, Any]):
    """The settings by our names, and how the user wrote each one: an error names the
    setting as it is written in the user's own file (``CELERY_RELIABLE_STATSD_PORT``
    under Django's namespace), whether its key or its value is wrong."""

    def __init__(self, values: Mapping[str, Any], spelled: Mapping[str, str]) -> None:
        super().__init__(values)
        self._spelled = dict(spelled)

    def written(self, name: str) -> str:
        return self._spelled.get(name, name)


def _unknown_message(names: list[str], spelled: Mapping[str, str]) -> str:
    parts = []
    for name in names:
        written = spelled.get(name, name)
        close = difflib.get_close_matches(name, DEFAULTS, n=1, cutoff=0.7)
        hint = f" (did you mean {_as_written(close[0], name, written)!r}?)" if close else ""
        parts.append(f"{written!r}{hint}")
    return (
        "unknown celery_reliable setting "
        + ", ".join(parts)
        + f"; the settings are listed at {docs_url('configuration')}"
    )


def _as_written(suggestion: str, name: str, written: str) -> str:
    """The suggestion in the user's own spelling: ``CELERY_RELIABLE_UNCLASSIFIED`` for
    ``CELERY_RELIABLE_UNCLASIFIED`` under Django's namespace."""
    prefix = written[: len(written) - len(name)]
    return prefix + (suggestion.upper() if written.isupper() else suggestion)


def _optional_str(name: str, values: _Values) -> str | None:
    value = values[name]
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ImproperlyConfigured(f"{values.written(name)} must be a string, got {value!r}")
    return value


def _str(name: str, values: _Values) -> str:
    value = values[name]
    if not isinstance(value, str):
        raise ImproperlyConfigured(f"{values.written(name)} must be a string, got {value!r}")
    return value


def _int(name: str, values: _Values, low: int, high: int | None = None) -> int:
    value = values[name]
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < low
        or (high is not None and value > high)
    ):
        bounds = f">= {low}" if high is None else f"between {low} and {high}"
        raise ImproperlyConfigured(f"{values.written(name)} must be an int {bounds}, got {value!r}")
    return value


def _seconds(name: str, values: _Values) -> float:
    value = values[name]
    if hasattr(value, "total_seconds"):
        value = value.total_seconds()
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not (math.isfinite(value) and value > 0)
    ):
        raise ImproperlyConfigured(
            f"{values.written(name)} must be a number of seconds > 0, got {value!r}"
        )
    return float(value)


def _redact(name: str, values: _Values) -> bool | frozenset[str]:
    value = values[name]
    if isinstance(value, bool):
        return value
    if isinstance(value, (list, tuple, set, frozenset)) and all(
        isinstance(item, str) for item in value
    ):
        return frozenset(value)
    raise ImproperlyConfigured(
        f"{values.written(name)} must be True, False or a list of task names, got {value!r}"
    )


def _credentials(name: str, values: _Values) -> tuple[tuple[str, str], ...]:
    """``"user:password"``, or a list of them, as ``(user, password)`` pairs (the
    password may hold colons; the user may not)."""
    value = values[name]
    if value is None or value == "":
        return ()
    entries = [value] if isinstance(value, str) else value
    if not isinstance(entries, (list, tuple)):
        raise ImproperlyConfigured(
            f"{values.written(name)} must be 'user:password' or a list of them, "
            f"got {type(value).__name__}"
        )
    pairs = []
    for entry in entries:
        user, colon, password = entry.partition(":") if isinstance(entry, str) else ("", "", "")
        if not (user and colon and password):
            raise ImproperlyConfigured(
                f"{values.written(name)}: each entry must be 'user:password' with both "
                "parts non-empty"
            )
        pairs.append((user, password))
    return tuple(pairs)


def _waive(name: str, values: _Values) -> dict[str, str]:
    """Checked as a task's ``waive=`` is: known gates, a reason each."""
    try:
        return check_waive("", values[name], option=values.written(name))
    except (TypeError, ValueError) as exc:
        raise ImproperlyConfigured(str(exc)) from exc


def _bool(name: str, values: _Values) -> bool:
    value = values[name]
    if not isinstance(value, bool):
        raise ImproperlyConfigured(f"{values.written(name)} must be True or False, got {value!r}")
    return value
