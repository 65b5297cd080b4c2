"""The tables: receipts, dead letters, unique-enqueue locks, outcome history, and the
others listed below (heartbeats, cancels, pauses, steps, limits, the outbox).

Times are naive UTC ``DateTime`` columns (SQLite has no time zones), written by the
workers' clocks: keep them NTP-synchronised, as any lease-based system needs.
The schema is owned by the Alembic migrations in ``store/migrations``; this module is
what the code queries and what the first migration creates.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

#: One row per (task, idempotency key). ``state`` is "in_progress" while an execution
#: holds the claim (until ``lease_expires_at``) and "succeeded" once it is done. A
#: released claim is deleted.
receipts = Table(
    "reliable_receipts",
    metadata,
    Column("task_name", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("payload_hash", String(64), nullable=False),
    Column("state", String(16), nullable=False),
    Column("task_id", String(255), nullable=False),
    Column("claim_token", String(32), nullable=False),
    Column("claims", Integer, nullable=False, default=1),
    Column("lease_expires_at", DateTime, nullable=True),
    Column("result", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("completed_at", DateTime, nullable=True),
    Index("ix_reliable_receipts_completed_at", "completed_at"),
    Index("ix_reliable_receipts_lease_expires_at", "lease_expires_at"),
    # The web view's listing by state (0003).
    Index("ix_reliable_receipts_state_task_name_key", "state", "task_name", "key"),
)

#: One row per DISCARDED / EXHAUSTED / FAILED execution: enough to read what went
#: wrong and to re-publish the job.
dead_letters = Table(
    "reliable_dead_letters",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("task_id", String(255), nullable=False),
    Column("task_name", String(255), nullable=False),
    Column("queue", String(255), nullable=True),
    Column("args", Text, nullable=True),
    Column("kwargs", Text, nullable=True),
    Column("options", Text, nullable=False),
    Column("redacted", Boolean, nullable=False, default=False),
    Column("outcome", String(16), nullable=False),
    Column("exc_type", String(255), nullable=True),
    Column("exc_message", Text, nullable=True),
    Column("traceback", Text, nullable=True),
    Column("reason", Text, nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Column("retried_at", DateTime, nullable=True),
    Column("retried_task_id", String(255), nullable=True),
    #: The dead letter whose retry this job was, when it was one (0004).
    Column("retry_of", Integer, nullable=True),
    Index("ix_reliable_dead_letters_task_name_created_at", "task_name", "created_at"),
    Index("ix_reliable_dead_letters_created_at", "created_at"),
    # The web view's pages, newest id first, filtered by task or outcome (0003).
    Index("ix_reliable_dead_letters_task_name_id", "task_name", "id"),
    Index("ix_reliable_dead_letters_outcome_id", "outcome", "id"),
    # The rows not retried yet, by task (partial: retried rows are not in it): the
    # overview's per-task counts and the "not retried" listings and bulk retries (0003).
    Index(
        "ix_reliable_dead_letters_pending_task_name_id",
        "task_name",
        "id",
        sqlite_where=text("retried_at IS NULL"),
        postgresql_where=text("retried_at IS NULL"),
    ),
    # What became of a retry: the dead letter of a retried task id, the dead letters
    # that came from retrying one (0004).
    Index("ix_reliable_dead_letters_task_id", "task_id"),
    Index("ix_reliable_dead_letters_retry_of", "retry_of"),
)

#: One row per held unique-enqueue key. The primary key is what makes acquiring it
#: race-free: of N concurrent publishers, one insert wins.
unique_locks = Table(
    "reliable_unique_locks",
    metadata,
    Column("task_name", String(255), primary_key=True),
    Column("key", String(255), primary_key=True),
    Column("task_id", String(255), nullable=False),
    Column("expires_at", DateTime, nullable=False),
    Column("created_at", DateTime, nullable=False),
    Index("ix_reliable_unique_locks_expires_at", "expires_at"),
)

#: The last heartbeat of each running execution of a task with ``heartbeat_timeout``:
#: written by its beats (at most once a second), removed when it ends; a row left by a
#: worker that died is pruned with the receipts.
progress = Table(
    "reliable_progress",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("task_name", String(255), nullable=False),
    Column("hostname", String(255), nullable=True),
    Column("pid", Integer, nullable=False),
    Column("started_at", DateTime, nullable=False),
    Column("beat_at", DateTime, nullable=False),
    Column("progress", Float, nullable=True),
    #: JSON object of the beat's details.
    Column("details", Text, nullable=True),
    Index("ix_reliable_progress_beat_at", "beat_at"),
)

#: One row per cancelled job (``celery reliable cancel``): persistent, unlike Celery's
#: revoke, so a job that has not started yet ends CANCELLED when it would start, across
#: retries and worker restarts; a running job with a heartbeat reads it at its next
#: beat. Pruned with the receipts (``requested_at`` older than the receipt TTL).
cancels = Table(
    "reliable_cancels",
    metadata,
    Column("task_id", String(255), primary_key=True),
    Column("reason", Text, nullable=True),
    #: Who asked: "user@host" of the CLI, or the web view's caller.
    Column("requested_by", String(255), nullable=True),
    Column("requested_at", DateTime, nullable=False),
    Index("ix_reliable_cancels_requested_at", "requested_at"),
)

#: One row per paused queue or task (``celery reliable pause``): ``kind`` is "queue" or
#: "task". Workers read every row at start and every few seconds (``worker/pauses.py``);
#: ``resume`` deletes the row. Never pruned: a pause lasts until it is resumed.
pauses = Table(
    "reliable_pauses",
    metadata,
    Column("kind", String(16), primary_key=True),
    Column("name", String(255), primary_key=True),
    Column("reason", Text, nullable=True),
    #: Who paused it: "user@host" of the CLI, or the web view's caller.
    Column("paused_by", String(255), nullable=True),
    Column("paused_at", DateTime, nullable=False),
)

#: One row per message written by ``publish_in`` (``celery_reliable/outbox``) in the
#: caller's own transaction: what Celery would have handed the broker, whole (the
#: serialized body, its headers and properties, where it goes). A relay publishes the
#: committed rows in ``id`` order and deletes each once the broker accepted it; the table
#: stays empty while relays keep up. ``id`` never repeats (AUTOINCREMENT on SQLite), so
#: ``id`` order is the order the rows were written in.
outbox = Table(
    "reliable_outbox",
    metadata,
    Column(
        "id",
        BigInteger().with_variant(Integer, "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column("task_id", String(255), nullable=False),
    Column("task_name", String(255), nullable=False),
    #: The exchange's name ("" for Celery's default direct routing) and routing key.
    Column("exchange", String(255), nullable=False),
    Column("routing_key", String(255), nullable=False),
    #: The body as serialized (and compressed) for the broker.
    Column("body", LargeBinary, nullable=False),
    Column("content_type", String(255), nullable=False),
    Column("content_encoding", String(64), nullable=False),
    #: JSON (kombu's, which keeps dates and UUIDs) of the message's headers and of its
    #: properties (delivery mode, priority, correlation id, reply-to, expiration).
    Column("headers", Text, nullable=False),
    Column("properties", Text, nullable=False),
    #: JSON list of the queues declared before publishing, by name (as Celery does).
    Column("declare", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    sqlite_autoincrement=True,
)

#: One row per (periodic entry, due time) of ``celery_reliable.beat:Scheduler``: the
#: primary key is the claim that lets any number of beat processes publish each slot
#: once (of N inserts, one wins). ``state`` is "claimed" from the insert until the
#: broker took the message ("published"), "skipped" for a slot older than
#: ``reliable_beat_catch_up`` (a row standing for ``skipped`` slots, the first due at
#: ``skipped_from``). A claimed row whose lease ran out (its beat died before
#: publishing) is taken over by another beat. Pruned with the receipts, but for each
#: entry's newest row, which says where the schedule stands.
beat_runs = Table(
    "reliable_beat_runs",
    metadata,
    Column("entry", String(255), primary_key=True),
    Column("due_at", DateTime, primary_key=True),
    Column("task_name", String(255), nullable=False),
    #: Derived from (entry, due time): the same on every beat, so a second publish of
    #: the slot is recognised by the worker's receipt.
    Column("task_id", String(255), nullable=False),
    Column("state", String(16), nullable=False),
    #: "host:pid" of the beat holding (or last holding) the claim.
    Column("claimed_by", String(255), nullable=False),
    Column("claimed_at", DateTime, nullable=False),
    Column("lease_expires_at", DateTime, nullable=True),
    Column("published_at", DateTime, nullable=True),
    Column("publishes", Integer, nullable=False, default=0),
    Column("skipped", Integer, nullable=True),
    Column("skipped_from", DateTime, nullable=True),
    Index("ix_reliable_beat_runs_due_at", "due_at"),
    Index("ix_reliable_beat_runs_state_lease_expires_at", "state", "lease_expires_at"),
)

#: One row per (task, job, step) of ``self.step(name)``: a job is its idempotency key
#: when it has one, else its task id. ``cursor`` is the last ``step.advance(value)``
#: (JSON); ``finished_at`` is set when the step's block ended without an exception, so a
#: later execution of the same job skips it. Pruned with the receipts (``updated_at``).
steps = Table(
    "reliable_steps",
    metadata,
    Column("task_name", String(255), primary_key=True),
    Column("job", String(255), primary_key=True),
    Column("step", String(255), primary_key=True),
    Column("cursor", Text, nullable=True),
    Column("advances", Integer, nullable=False, default=0),
    Column("started_at", DateTime, nullable=False),
    Column("updated_at", DateTime, nullable=False),
    Column("finished_at", DateTime, nullable=True),
    Index("ix_reliable_steps_updated_at", "updated_at"),
)

#: ``limits=[...]`` kept in the store (``reliable_limits_url = "store"``). Times are epoch
#: milliseconds, as in Redis. One row per limit key, locked first by every take of that
#: key (so takes of one key are serialized, on SQLite and PostgreSQL alike), with the
#: mean time a concurrency slot is held and the pace of its takes (``limits/parts.py``):
#: the mean gap between two takes, the last take, the last job turned away.
limit_keys = Table(
    "reliable_limit_keys",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("mean_hold_ms", Float, nullable=True),
    Column("touched_ms", BigInteger, nullable=False),
    Column("take_gap_ms", Float, nullable=True),
    Column("last_take_ms", BigInteger, nullable=True),
    Column("refused_ms", BigInteger, nullable=True),
    Index("ix_reliable_limit_keys_touched_ms", "touched_ms"),
)

#: A held concurrency slot (until its lease ends) or a start within a rate's window
#: (until it leaves the window).
limit_slots = Table(
    "reliable_limit_slots",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("token", String(255), primary_key=True),
    Column("at_ms", BigInteger, nullable=False),
    Column("until_ms", BigInteger, nullable=False),
    Index("ix_reliable_limit_slots_key_until_ms", "key", "until_ms"),
)

#: A job that found a limit full, in line by when it first waited (``line_us``: that
#: millisecond * 1000 + a number of the job's own, for a strict order); forgotten at
#: ``forget_ms`` unless it comes back; keeping a free slot from newer jobs from
#: ``keep_ms`` (``limits/parts.py``; NULL, from rows written before it: once due).
limit_waiters = Table(
    "reliable_limit_waiters",
    metadata,
    Column("key", String(255), primary_key=True),
    Column("job", String(255), primary_key=True),
    Column("line_us", BigInteger, nullable=False),
    Column("forget_ms", BigInteger, nullable=False),
    Column("keep_ms", BigInteger, nullable=True),
    # A take reads the line in order: the oldest waiters ahead of it, how many are ahead.
    Index("ix_reliable_limit_waiters_key_line_us", "key", "line_us"),
)

#: One row per ``Batch`` (``celery_reliable/batches``): written when its block opens
#: (``state`` "open"), sealed when it exits ("sealed", ``total`` members; "abandoned"
#: when the block raised: its callbacks never fire), "completed" once every member has
#: ended. ``done`` and the per-outcome counts are added to by one statement per member
#: ending (``reliable_batch_members`` keeps each member's ending once). The callbacks
#: are Celery signatures as JSON. Pruned with the receipts once completed.
batches = Table(
    "reliable_batches",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("description", Text, nullable=True),
    Column("state", String(16), nullable=False),
    Column("total", Integer, nullable=True),
    *(
        Column(name, Integer, nullable=False, server_default="0")
        for name in (
            "done",
            "succeeded",
            "duplicate",
            "cancelled",
            "discarded",
            "exhausted",
            "failed",
        )
    ),
    Column("on_complete", Text, nullable=True),
    Column("on_success", Text, nullable=True),
    Column("created_at", DateTime, nullable=False),
    Column("sealed_at", DateTime, nullable=True),
    Column("completed_at", DateTime, nullable=True),
    Index("ix_reliable_batches_created_at", "created_at"),
    Index("ix_reliable_batches_completed_at", "completed_at"),
)

#: One row per member of a batch: written pending (``outcome`` NULL) at the seal, or by
#: ``publish_in`` in the caller's transaction (a member only if it commits), or ended by
#: the member itself when it ends before the seal. The seal's ``total`` is their count.
#: A member's ending sets ``outcome`` only while it is NULL, so a second execution of
#: the same task id (a redelivery, a DUPLICATE) never counts twice.
batch_members = Table(
    "reliable_batch_members",
    metadata,
    Column("batch_id", String(64), primary_key=True),
    Column("task_id", String(255), primary_key=True),
    Column("task_name", String(255), nullable=True),
    Column("outcome", String(16), nullable=True),
    Column("ended_at", DateTime, nullable=True),
)

#: Upper bounds (seconds, inclusive) of the duration histogram's buckets, and their
#: columns; a last column counts the durations above the last bound.
DURATION_BOUNDS = (0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, 60.0, 300.0)
DURATION_BUCKETS = (
    "under_10ms",
    "under_50ms",
    "under_100ms",
    "under_500ms",
    "under_1s",
    "under_5s",
    "under_30s",
    "under_1m",
    "under_5m",
    "over_5m",
)

#: Executions per (task, minute, queue, outcome), written by each worker process every
#: few seconds. ``duration_*`` and the buckets cover the executions whose duration was
#: known (``duration_count`` of ``count``).
outcome_history = Table(
    "reliable_outcome_history",
    metadata,
    Column("task_name", String(255), primary_key=True),
    Column("minute", DateTime, primary_key=True),
    Column("queue", String(255), primary_key=True),
    Column("outcome", String(16), primary_key=True),
    Column("count", Integer, nullable=False),
    Column("duration_count", Integer, nullable=False),
    Column("duration_sum", Float, nullable=False),
    Column("duration_max", Float, nullable=False),
    *(Column(name, Integer, nullable=False) for name in DURATION_BUCKETS),
    Index("ix_reliable_outcome_history_minute", "minute"),
)

#: Alembic's version table for our migrations, apart from the application's own.
VERSION_TABLE = "reliable_alembic_version"
