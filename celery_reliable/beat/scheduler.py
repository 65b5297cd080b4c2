"""``celery_reliable.beat:Scheduler``: celery beat's scheduler, publishing each slot of
the ordinary ``beat_schedule`` once however many beat processes run.

Each beat computes the same slots (``timeline.py``) and, for each one that is due,
inserts its row in the store (``store/beat.py``) before it publishes: of N beats one
insert wins, and only that beat publishes. Nothing is published unclaimed, so while the
store cannot be reached, nothing is published at all (said once per outage); the slots
then missed are caught up, or skipped, by the rule below when it answers again.

A beat that dies between its claim and its publish leaves a claimed row whose lease
(:data:`CLAIM_LEASE`) runs out; the next beat to look takes it over and publishes the
slot under the same task id. If the dead beat had published after all, the worker
recognises the task id (the ``reliable_beat`` header: a receipt per task id, as for the
outbox's messages) and runs the job once. A beat whose broker refuses a message gives
its claim back at once (the lease ends) and claims nothing more until its broker
answers: a beat cut off from the broker holds no slot that another could publish.

Catch-up: a slot that was due while no beat could publish it (before this beat's
previous look, or before it started) is published late if it is at most
``reliable_beat_catch_up`` seconds old, else skipped; each is said in one log line, by
the beat that did it. A new entry (no row in the store yet) starts at its next slot.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from time import monotonic
from typing import Any

from celery.beat import BeatLazyFunc
from celery.beat import Scheduler as CeleryScheduler
from celery.exceptions import ImproperlyConfigured
from kombu.exceptions import OperationalError

from celery_reliable.beat.timeline import (
    IntervalTimeline,
    Timeline,
    first_at_or_after,
    iso,
    slots_between,
    task_id_for,
    timeline_for,
)
from celery_reliable.config import as_written, settings_for
from celery_reliable.errors import MissingDependency, StoreUnavailable
from celery_reliable.headers import BEAT_HEADER
from celery_reliable.store import Store, store_for

logger = logging.getLogger("celery_reliable.beat")

UTC = timezone.utc

#: Seconds a claim is held before another beat may take it over: far longer than a
#: publish takes, short enough that a slot whose beat died goes out soon after.
CLAIM_LEASE = 10.0
#: The longest sleep between two looks when ``beat_max_loop_interval`` is not set: how
#: late an abandoned claim is found, at worst (Celery's own default is 300 s).
MAX_INTERVAL = 5
#: Seconds between two tries while the store or the broker is down: doubling, capped.
RETRY_FIRST = 0.5
RETRY_MAX = 5.0
#: Slots counted one by one when skipping (a minutely crontab down for a week is 10,080).
SKIP_COUNT_LIMIT = 10_000


class BeatMisconfigured(SystemExit):
    """celery beat cannot start with this scheduler: one line on stderr, exit status 1
    (instead of Celery's traceback through its own start-up code)."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(1)
        self.cause = cause
        print(f"celery_reliable: beat cannot start: {cause}", file=sys.stderr, flush=True)

    def __str__(self) -> str:
        return str(self.cause)


@dataclass
class _Entry:
    """Where one entry stands in this beat."""

    timeline: Timeline | None
    #: The next slot this beat has not dealt with; None: never due again.
    next: datetime | None = None
    #: Why its slots cannot be computed (said once).
    broken: str | None = None


@dataclass(frozen=True)
class _Slot:
    entry: str
    due: datetime
    task_id: str


class _BrokerDown(Exception):
    """This beat's broker refused a message: claim nothing until it answers."""


class _Outage:
    """One line when something stops answering, one when it answers again."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.since: float | None = None
        self.retry = RETRY_FIRST

    def failed(self, error: BaseException, meanwhile: str) -> float:
        """Say it (the first time): the seconds to wait before the next try."""
        if self.since is None:
            self.since = monotonic()
            self.retry = RETRY_FIRST
            logger.warning(
                "celery_reliable beat: the %s is unreachable (%s); %s",
                self.what,
                _short(error),
                meanwhile,
            )
        else:
            self.retry = min(self.retry * 2, RETRY_MAX)
        return self.retry

    def answered(self) -> None:
        if self.since is not None:
            logger.warning(
                "celery_reliable beat: the %s answers again after %.1f s",
                self.what,
                monotonic() - self.since,
            )
            self.since = None

    @property
    def down(self) -> bool:
        return self.since is not None


class Scheduler(CeleryScheduler):
    """celery beat's scheduler, claiming each (entry, due time) in the store before
    publishing it: ``beat_scheduler = "celery_reliable.beat:Scheduler"``."""

    max_interval = MAX_INTERVAL

    def __init__(self, app: Any, *args: Any, **kwargs: Any) -> None:
        # No schedule file: what ran is in the store, shared by every beat.
        kwargs.pop("schedule_filename", None)
        self._store: Store | None = None
        self._entries: dict[str, _Entry] = {}
        #: Published, not yet marked so (the store went down in between).
        self._unmarked: list[_Slot] = []
        #: While the broker is down: when to try it again (monotonic).
        self._broker_retry_at = 0.0
        self._loaded = False
        #: When the previous look began (successful or not): a slot due since then is
        #: on time; one due before it was missed (not published at that look).
        self._previous_look: datetime | None = None
        #: The previous look met an outage (store or broker): what it could not publish,
        #: and what fell due while this beat waited to look again, is caught up now.
        self._previous_look_failed = False
        self._next_orphan_look = 0.0
        self._store_outage = _Outage("store")
        self._broker_outage = _Outage("broker")
        self._connection: Any = None
        self._producer: Any = None
        self.catch_up = 0.0
        #: Who claims, in the store and in the log.
        self.ident = f"{socket.gethostname()}:{os.getpid()}"
        super().__init__(app, *args, **kwargs)

    @staticmethod
    def clock() -> datetime:
        """Now, aware UTC (a test steps it instead)."""
        return datetime.now(UTC)

    # -- start ------------------------------------------------------------------------

    def setup_schedule(self) -> None:
        try:
            settings = settings_for(self.app)
            store = store_for(self.app)
            if store is None:
                setting = as_written(self.app, "reliable_database_url")
                raise ImproperlyConfigured(
                    f"{setting} is None: celery_reliable.beat:Scheduler claims each due "
                    "time in the store; set it to the database every beat shares"
                )
            if settings.beat_catch_up >= settings.receipt_ttl:
                raise ImproperlyConfigured(
                    f"{as_written(self.app, 'reliable_beat_catch_up')} "
                    f"({settings.beat_catch_up:g}s) must be shorter than "
                    f"{as_written(self.app, 'reliable_receipt_ttl')} "
                    f"({settings.receipt_ttl:g}s): a slot published twice runs once only "
                    "while its receipt is kept"
                )
        except (ImproperlyConfigured, MissingDependency) as exc:
            raise BeatMisconfigured(exc) from exc
        self._store = store
        self.catch_up = settings.beat_catch_up
        super().setup_schedule()
        logger.info(
            "celery_reliable beat: %s (%s); each due time claimed in %s by %s, missed "
            "slots caught up within %gs",
            f"{len(self.schedule)} entr{'y' if len(self.schedule) == 1 else 'ies'}",
            ", ".join(sorted(self.schedule)) or "none",
            _url(store),
            self.ident,
            self.catch_up,
        )

    @property
    def info(self) -> str:
        try:
            url = settings_for(self.app).database_url
        except ImproperlyConfigured:
            url = None
        return f"    . store -> {_shown(url)} (each due time claimed once)"

    # -- the loop ---------------------------------------------------------------------

    def tick(self, *args: Any, **kwargs: Any) -> float:
        """Publish what is due; the seconds until the next look."""
        now = self.clock()
        if self._broker_outage.down and monotonic() < self._broker_retry_at:
            return self._broker_retry_at - monotonic()
        try:
            return self._look(now)
        finally:
            self._previous_look = now

    def _look(self, now: datetime) -> float:
        try:
            if not self._loaded:
                self._load(now)
            self._mark_unmarked()
            self._store_outage.answered()
            self._take_over_orphans(now)
            for name in list(self.schedule):
                self._run_entry(name, now)
        except StoreUnavailable as exc:
            # Reloaded when it answers: another beat may have gone on meanwhile.
            self._loaded = False
            self._previous_look_failed = True
            return self._store_outage.failed(
                exc, "nothing is published until it answers (a slot is published only once claimed)"
            )
        except _BrokerDown:
            self._previous_look_failed = True
            return self._broker_retry_at - monotonic()
        self._previous_look_failed = False
        return self._sleep()

    def _sleep(self) -> float:
        upcoming = [state.next for state in self._entries.values() if state.next is not None]
        if not upcoming:
            return float(self.max_interval)
        seconds = (min(upcoming) - self.clock()).total_seconds()
        return max(0.0, min(seconds, float(self.max_interval)))

    def _load(self, now: datetime) -> None:
        """Where each entry stands: after its newest slot in the store (the slots
        after it are caught up by the rule), or, for an entry never run, at its next
        slot."""
        last = self.store.beat_runs.last_due()
        for name, entry in self.schedule.items():
            state = self._entries.get(name)
            if state is None:
                state = self._entries[name] = self._new_state(name, entry)
            if state.timeline is None:
                continue
            stored = last.get(name)
            try:
                if stored is not None:
                    after_stored = state.timeline.after(stored.replace(tzinfo=UTC))
                elif state.next is None:
                    after_stored = state.timeline.after(now)
                else:
                    after_stored = state.next
            except Exception as exc:
                self._broken(name, state, exc)
                continue
            if state.next is None or (after_stored is not None and after_stored > state.next):
                state.next = after_stored
        self._loaded = True

    def _new_state(self, name: str, entry: Any) -> _Entry:
        try:
            return _Entry(timeline=timeline_for(entry.schedule))
        except Exception as exc:
            state = _Entry(timeline=None)
            self._broken(name, state, exc)
            return state

    def _broken(self, name: str, state: _Entry, exc: Exception) -> None:
        said = f"{type(exc).__name__}: {exc}"
        if state.broken != said:
            state.broken = said
            logger.error(
                "celery_reliable beat: %r is not published until this beat restarts: %s",
                name,
                said,
            )
        state.next = None

    # -- one entry --------------------------------------------------------------------

    def _run_entry(self, name: str, now: datetime) -> None:
        state = self._entries.get(name)
        if state is None or state.timeline is None or state.next is None:
            return
        entry = self.schedule[name]
        timeline = state.timeline
        try:
            oldest_kept = now - timedelta(seconds=self.catch_up)
            if self._previous_look is not None:
                # What became due since the previous look is on time, however long that
                # look took (with a catch-up of 0, too).
                oldest_kept = min(oldest_kept, self._previous_look)
            if state.next < oldest_kept and state.next <= now:
                kept = first_at_or_after(timeline, oldest_kept)
                self._skip(name, entry, timeline, state.next, kept or now)
                state.next = kept
            caught_up: list[datetime] = []
            try:
                while state.next is not None and state.next <= now:
                    due = state.next
                    published = self._claim_and_publish(name, entry, due)
                    # Dealt with: published, someone else's, or given back (the broker).
                    state.next = timeline.after(due)
                    if published and self._missed(due):
                        caught_up.append(due)
            finally:
                if caught_up:
                    logger.warning(
                        "celery_reliable beat: caught up %s of %r missed while no beat "
                        "could publish (due %s), within reliable_beat_catch_up (%gs)",
                        _slots(len(caught_up)),
                        name,
                        _span(caught_up[0], caught_up[-1]),
                        self.catch_up,
                    )
        except (StoreUnavailable, _BrokerDown):
            raise
        except Exception as exc:
            self._broken(name, state, exc)

    def _missed(self, due: datetime) -> bool:
        """Due before the previous look, or at all since a look that met an outage (the
        slot fell due while this beat waited to try again)."""
        return (
            self._previous_look is None or self._previous_look_failed or due < self._previous_look
        )

    def _skip(
        self, name: str, entry: Any, timeline: Timeline, first: datetime, end: datetime
    ) -> None:
        """The slots from ``first`` to before ``end`` are too old: one row stands for
        them (the beat whose insert wins says so)."""
        if isinstance(timeline, IntervalTimeline):
            last = timeline.before(end)
            count: str = str(timeline.count(first, last))
        else:
            found, more = slots_between(
                timeline, first - timedelta(microseconds=1), end, SKIP_COUNT_LIMIT
            )
            if not found:
                return
            last = (timeline.before(end) if more else None) or found[-1]
            count = f"more than {len(found)}" if more else str(len(found))
        task_id = task_id_for(name, entry.task, last)
        wrote = self.store.beat_runs.skip(
            name,
            _naive(last),
            task_name=entry.task,
            task_id=task_id,
            by=self.ident,
            skipped=int(count.rsplit(" ", 1)[-1]),
            skipped_from=_naive(first),
            now=_naive(self.clock()),
        )
        if wrote:
            logger.warning(
                "celery_reliable beat: skipped %s %s of %r (due %s): older than "
                "reliable_beat_catch_up (%gs)",
                count,
                "slot" if count == "1" else "slots",
                name,
                _span(first, last),
                self.catch_up,
            )

    def _claim_and_publish(self, name: str, entry: Any, due: datetime) -> bool:
        """Claim the slot; publish it if this beat won. True when it did both."""
        task_id = task_id_for(name, entry.task, due)
        with _stop_signals_held():
            won = self.store.beat_runs.claim(
                name,
                _naive(due),
                task_name=entry.task,
                task_id=task_id,
                by=self.ident,
                lease_seconds=CLAIM_LEASE,
                now=_naive(self.clock()),
            )
            if not won:
                return False
            return self._publish_claimed(_Slot(name, due, task_id), entry)

    # -- publishing -------------------------------------------------------------------

    def _publish_claimed(self, slot: _Slot, entry: Any) -> bool:
        """Publish a slot this beat holds the claim of, then mark it published. A
        message that cannot be built is marked failed (False); a broker that refuses it
        gets the claim given back, and raises :class:`_BrokerDown`."""
        try:
            self._send(slot, entry)
        except Exception as exc:
            if self._is_broker_error(exc):
                self._broker_refused(slot, exc)
            logger.error(
                "celery_reliable beat: the slot of %r due %s cannot be published (%s); "
                "it is marked failed",
                slot.entry,
                iso(slot.due),
                _short(exc),
            )
            self.store.beat_runs.failed(slot.entry, _naive(slot.due))
            return False
        self._broker_outage.answered()
        entry.last_run_at = slot.due
        entry.total_run_count += 1
        logger.info(
            "celery_reliable beat: published %s (%s) due %s as %s",
            slot.entry,
            entry.task,
            iso(slot.due),
            slot.task_id,
        )
        try:
            self.store.beat_runs.published(slot.entry, _naive(slot.due), _naive(self.clock()))
        except StoreUnavailable:
            self._unmarked.append(slot)
            raise
        return True

    def _broker_refused(self, slot: _Slot, exc: Exception) -> None:
        self._disconnect()
        # Given back at once: a beat whose broker answers publishes it at its next look
        # for abandoned claims (this one too, once its broker is back).
        self.store.beat_runs.give_back(
            slot.entry, _naive(slot.due), self.ident, _naive(self.clock())
        )
        wait = self._broker_outage.failed(
            exc, "this beat claims nothing until it answers (the slot claimed is given back)"
        )
        self._broker_retry_at = monotonic() + wait
        self._next_orphan_look = 0.0  # at the next try: the slots given back first
        raise _BrokerDown from exc

    def _mark_unmarked(self) -> None:
        while self._unmarked:
            slot = self._unmarked[0]
            self.store.beat_runs.published(slot.entry, _naive(slot.due))
            self._unmarked.pop(0)

    def _take_over_orphans(self, now: datetime) -> None:
        """Claims whose beat died before publishing (their lease ran out): published
        by this beat under the same task id, or skipped when older than the catch-up."""
        if monotonic() < self._next_orphan_look:
            return
        self._next_orphan_look = monotonic() + CLAIM_LEASE / 2
        runs = self.store.beat_runs
        for run in runs.orphans(_naive(now)):
            entry = self.schedule.get(run.entry)
            if entry is None:
                continue
            due = run.due_at.replace(tzinfo=UTC)
            if due < now - timedelta(seconds=self.catch_up):
                if runs.abandon(run.entry, run.due_at, self.ident, _naive(now)):
                    logger.warning(
                        "celery_reliable beat: the slot of %r due %s, claimed by %s which "
                        "never published it, is older than reliable_beat_catch_up (%gs): "
                        "skipped",
                        run.entry,
                        iso(due),
                        run.claimed_by,
                        self.catch_up,
                    )
                continue
            if not runs.take_over(run.entry, run.due_at, self.ident, CLAIM_LEASE, _naive(now)):
                continue  # another beat took it first
            if run.claimed_by != self.ident:
                logger.warning(
                    "celery_reliable beat: the slot of %r due %s was claimed by %s, which "
                    "did not say it published it (it died, or its broker refused): "
                    "publishing it as %s (a second copy runs once)",
                    run.entry,
                    iso(due),
                    run.claimed_by,
                    run.task_id,
                )
            with _stop_signals_held():
                self._publish_claimed(_Slot(run.entry, due, run.task_id), entry)

    def _send(self, slot: _Slot, entry: Any) -> Any:
        """Publish as Celery's scheduler would (the entry's args, kwargs and options,
        lazy arguments evaluated now), under the slot's task id and headers."""
        args = tuple(v() if isinstance(v, BeatLazyFunc) else v for v in entry.args or ())
        kwargs = {
            k: v() if isinstance(v, BeatLazyFunc) else v for k, v in (entry.kwargs or {}).items()
        }
        options = dict(entry.options or {})
        headers = dict(options.pop("headers", None) or {})
        headers["celery_beat_task"] = True  # as Celery's own scheduler marks it
        headers[BEAT_HEADER] = {"entry": slot.entry, "due": iso(slot.due)}
        options.pop("task_id", None)
        producer = self._producer_now()
        task = self.app.tasks.get(entry.task)
        if task is not None:
            return task.apply_async(
                args, kwargs, producer=producer, task_id=slot.task_id, headers=headers, **options
            )
        return self.app.send_task(
            entry.task,
            args,
            kwargs,
            producer=producer,
            task_id=slot.task_id,
            headers=headers,
            **options,
        )

    # -- the broker -------------------------------------------------------------------

    def _producer_now(self) -> Any:
        if self._producer is None:
            connection = self.app.connection_for_write()
            # One try: a broker that is down is said and tried again at the next look,
            # instead of blocking the loop in kombu's retries.
            connection.ensure_connection(max_retries=1)
            self._connection = connection
            self._producer = self.app.amqp.Producer(connection, auto_declare=False)
        return self._producer

    def _disconnect(self) -> None:
        connection, self._connection, self._producer = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # a connection already lost
                logger.debug("releasing beat's broker connection failed", exc_info=True)

    def _is_broker_error(self, exc: Exception) -> bool:
        if isinstance(exc, (OperationalError, OSError)):
            return True
        connection = self._connection or self.app.connection_for_write()
        try:
            errors = tuple(connection.connection_errors) + tuple(connection.channel_errors)
        except Exception:  # the transport cannot even be loaded
            return False
        return isinstance(exc, errors)

    # -- Celery's hooks ---------------------------------------------------------------

    @property
    def store(self) -> Store:
        assert self._store is not None, "setup_schedule() has not run"
        return self._store

    def sync(self) -> None:
        """Nothing to write: each claim was written when it was taken."""

    def close(self) -> None:
        self._disconnect()
        super().close()


#: What celery beat stops on: its handler raises SystemExit wherever the loop is.
_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT}


@contextmanager
def _stop_signals_held() -> Iterator[None]:
    """SIGTERM and SIGINT wait while a slot goes from its claim to its mark (in the
    main thread, where celery beat runs the loop): a beat asked to stop finishes the
    slot first, instead of leaving a claim for another beat to take over in
    :data:`CLAIM_LEASE` s. SIGKILL cannot wait: that is what the take-over is for."""
    if (
        not hasattr(signal, "pthread_sigmask")
        or threading.current_thread() is not threading.main_thread()
    ):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        # A signal that came meanwhile is delivered here, and its handler runs now.
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _naive(moment: datetime) -> datetime:
    """As the store's columns hold it: naive UTC."""
    return moment.astimezone(UTC).replace(tzinfo=None)


def _url(store: Store) -> str:
    return str(store.engine.url.render_as_string(hide_password=True))


def _shown(url: str | None) -> str:
    if url is None:
        return "none (reliable_database_url is None)"
    from sqlalchemy.engine import make_url

    try:
        return str(make_url(url).render_as_string(hide_password=True))
    except Exception:  # "django", or a URL the store refuses later, saying why
        return url


def _slots(count: int) -> str:
    return f"{count} slot" if count == 1 else f"{count} slots"


def _span(first: datetime, last: datetime) -> str:
    return iso(first) if first == last else f"{iso(first)} to {iso(last)}"


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
