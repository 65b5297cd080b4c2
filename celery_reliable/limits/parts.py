"""What a limit backend is asked and answers: the parts of one take, and its answer;
and how a backend works out a wait, and who keeps a free slot.

Pure module, shared by the Redis backend (``redis_slots.py``, whose Lua mirrors the
functions below) and the SQL one (``store/limits.py``, which calls them).

**Who may take a free slot.** The waiters are in line by when they first waited. A
free slot is kept from a newer job only for the waiters ahead of it that *keep* one
now:

* the next in line (its turn within the next ``n`` takes when it was told to wait)
  keeps one from the moment it is told: it was just here, and it is next. Without this,
  a waiter at the head that came back to a busy limit would be sent back to sleep, and
  lose the slot that frees meanwhile to whichever newer job asked first, again and
  again: starved;
* a waiter further back keeps one once it is *due* (told to come back by now): until
  then it is asleep in its countdown, and a slot kept for it would stay idle;
* neither keeps one more than ``LATE_MS`` after it was due: one that oversleeps (its
  worker died, its pool is late) no longer holds up the jobs behind it, and goes first
  again when it comes back, since it keeps its place.

So a free slot stays idle for an absent waiter at most the wait it was told as next in
line (about a mean hold) plus ``LATE_MS``. Only the ``LOOK`` oldest waiters ahead are
looked at, so a take costs the same with ten waiters or ten thousand; a job deeper than
that is protected once it is among them, and the line ahead of it only shrinks.

**How long a concurrency wait is.** A waiter at ``position`` (the number of takes that
must happen before its turn) is told, next in line (``position < n``), a mean hold:
about when a holder ends; further back, the larger of

* the *ideal*: ``mean_hold * (position // n + 1)``, every freed slot taken again at
  once (the earliest its turn can come), and
* the *pace*: ``EARLY * (position + 1) * gap``, where ``gap`` is the measured time
  between two takes of the key (a moving average), at least ``mean_hold / n`` and at
  most ``SLOWEST`` times that.

The ideal alone assumed a freed slot is retaken at once; in fact a waiter's return
goes through the broker, a countdown and a free pool process, and a deep waiter told
the ideal came back far too early, again and again, its rechecks taking the pool
processes the holders needed (the chaos suite's 2,000 jobs under ``concurrency(3)``:
22 to 32 waits per job). The pace follows the real turnover. ``EARLY`` (below 1)
brings a waiter back a little before its turn rather than after: early costs one
recheck; late, when every waiter is asleep, leaves slots idle and, learnt as a slower
pace, puts the next waiters to sleep longer still. ``SLOWEST`` bounds what a slow spell
(holders killed, their slots held until their leases end) can teach, so the waiters
told during it do not oversleep once it is over; past it, a waiter comes back early
and asks again. Measured on that run: ``EARLY`` 0.75 made 3 to 4 times the rechecks
for no gain in time, and ``SLOWEST`` 2 traded more rechecks for a shorter tail.

**What the gap learns from.** An interval between two takes is a sample only when a
job was turned away during it (``refused`` after ``last``): then the limit, not the
demand, set its length. An idle period (nobody asking) teaches nothing, and a sample
is capped at ``SLOWEST * mean_hold / n`` too.
"""

from __future__ import annotations

import logging
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class Part:
    """One limit of one take: kind ``"c"``/``"r"``, rendered key, n, span in ms (a
    concurrency slot's lease, a rate's window)."""

    kind: str
    key: str
    n: int
    span_ms: int


@dataclass(frozen=True)
class Taken:
    #: Redis's clock at the take (ms), for the mean hold time at the give back.
    at_ms: int


@dataclass(frozen=True)
class Full:
    #: How long to wait before trying again (ms).
    wait_ms: int
    #: Index of the first limit that was full.
    blocked: int
    #: When this job first waited (ms): its place in the line.
    since_ms: int


#: A waiter not back this long after it was due is forgotten (ms): a job whose message
#: was lost does not stay in line for ever (one that comes back later keeps its place:
#: its first wait is in its message headers).
FORGET_AFTER_MS = 30_000
#: How long after it was due a waiter that has not come back still keeps a free slot
#: from newer jobs (ms): the bound on a slot left idle for an absent waiter. It covers
#: a return's usual delay (the broker, the countdown, a busy pool process); a waiter
#: later than that is treated as asleep, and goes first again when it comes back.
LATE_MS = 1_000
#: How many of the oldest waiters ahead of a job a take looks at for due ones.
LOOK = 64
#: Waiters come back at this share of the time their turn is expected (safety factor).
EARLY = 0.9
#: The measured gap between takes counts up to this many times the ideal one.
SLOWEST = 3.0
#: The mean hold time assumed before a key's first slot is given back (ms).
DEFAULT_MEAN_MS = 1000.0
#: The shortest wait told (ms).
MIN_WAIT_MS = 50.0
#: Weight of each new hold time and gap sample in their moving averages.
WEIGHT = 0.2


def concurrency_wait(position: int, n: int, mean_hold_ms: float, gap_ms: float | None) -> float:
    """How long a concurrency waiter waits (ms): next in line, a mean hold; further
    back, the larger of the ideal and the pace (the module's docstring says why).
    ``gap_ms`` None is no sample yet (the ideal)."""
    if position < n:
        return mean_hold_ms
    ideal_gap = mean_hold_ms / n
    gap = ideal_gap if gap_ms is None else min(max(gap_ms, ideal_gap), SLOWEST * ideal_gap)
    return max(mean_hold_ms * (position // n + 1), EARLY * (position + 1) * gap)


def next_gap(  # noqa: PLR0917 - the key's pace, and this take
    gap_ms: float | None,
    last_ms: int | None,
    refused_ms: int | None,
    now_ms: int,
    mean_hold_ms: float,
    n: int,
) -> float | None:
    """The gap between takes after a take at ``now_ms``: a sample only when a job was
    turned away since the last take, capped at ``SLOWEST`` times the ideal gap."""
    if last_ms is None or refused_ms is None or refused_ms < last_ms:
        return gap_ms
    sample = min(float(max(now_ms - last_ms, 0)), SLOWEST * mean_hold_ms / n)
    return sample if gap_ms is None else gap_ms * (1 - WEIGHT) + sample * WEIGHT


def tiebreak(job: str) -> int:
    """0-999, the same for a job every time: two jobs that first waited in the same
    millisecond still have a strict order in line (``since`` * 1000 + this)."""
    return zlib.crc32(job.encode()) % 1000


def not_given_back(task_names: Sequence[str], exc: Exception) -> None:
    """A give back that failed for good: said once (the outcome stands, and the slots
    free themselves when their leases end)."""
    logger = logging.getLogger("celery_reliable.limits")
    if len(task_names) == 1:
        logger.warning(
            "task %s: %s; its slots free themselves when their lease ends", task_names[0], exc
        )
        return
    logger.warning(
        "tasks %s: %s; their slots free themselves when their leases end",
        ", ".join(sorted(set(task_names))),
        exc,
    )


class Backend(Protocol):
    """Where slots live: every worker of every app that names it shares them."""

    def take(self, me: str, since_ms: int, token: str, parts: Sequence[Part]) -> Taken | Full:
        """Take a slot of every part, or none (and line ``me`` up where one was full)."""
        ...

    def give_back(self, token: str, at_ms: int, parts: Sequence[Part]) -> None:
        """Give back now (LimitsUnavailable if it cannot)."""
        ...

    def give_back_soon(self, token: str, at_ms: int, parts: Sequence[Part], task_name: str) -> None:
        """Give back without making the execution wait for it if the backend can
        (Redis: sent, its answer read later); never raises: a failure is logged,
        naming ``task_name`` (``not_given_back``)."""
        ...

    def renew(self, token: str, parts: Sequence[Part]) -> int:
        """Push the leases of this holder's concurrency slots; how many it still held."""
        ...

    def holders(self, part: Part) -> int: ...

    def close(self) -> None: ...
