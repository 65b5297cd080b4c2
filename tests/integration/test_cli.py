"""``celery -A proj reliable ...``: the real command line, as a user runs it, against
a real Redis broker and real SQLite and PostgreSQL stores. Each command family runs
once in a process of its own (``process=True``, the entry point from a shell); the
other commands run in this process through Celery's own ``celery`` group
(``tests/support/cli.py``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from celery_reliable.store import migrate, store_for
from tests.helpers import dead_letter_fields
from tests.support import servers
from tests.support.celery_apps import new_redis_db
from tests.support.cli import cli_app as run

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def broker(redis_url: str) -> str:
    return new_redis_db(redis_url)


def store_app(store_url: str) -> Any:
    app = Celery("cli-test", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = store_url
    return store_for(app)


#: The newest migration (each new one would otherwise change these tests).
HEAD = migrate.head()


def test_db_upgrade_and_current(broker: str, store_url: str) -> None:
    before = run(broker, store_url, "db", "current", process=True)  # the entry point
    assert before.returncode == 0, before.stderr
    if store_url.startswith("postgresql"):
        assert f"at (empty), code needs {HEAD}: run `celery reliable db upgrade`" in before.stdout
    upgraded = run(broker, store_url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"-> {HEAD}" in upgraded.stdout or f"already at {HEAD}" in upgraded.stdout
    again = run(broker, store_url, "db", "upgrade")
    assert f"already at {HEAD}" in again.stdout
    assert "up to date" in run(broker, store_url, "db", "current").stdout


def _dead_letter(store: Any, task_name: str = "cli.echo", reason: str = "boom", **more: Any) -> int:
    fields = dead_letter_fields(
        task_id=f"id-{reason}",
        task_name=task_name,
        args=["x"],
        kwargs={},
        exc_type="builtins.KeyError",
        exc_message="'x'",
        traceback="Traceback...\nKeyError: 'x'",
        reason=reason,
    )
    return int(store.dead_letters.write(**{**fields, **more}))


def test_dead_letters_list_show_retry_purge(broker: str, store_url: str) -> None:
    assert run(broker, store_url, "db", "upgrade").returncode == 0
    store = store_app(store_url)
    first = _dead_letter(store, reason="first failure")
    _dead_letter(store, task_name="cli.other", reason="second failure")

    listed = run(broker, store_url, "dead", "list", process=True)  # the entry point
    assert listed.returncode == 0, listed.stderr
    assert "first failure" in listed.stdout and "second failure" in listed.stdout
    as_json = json.loads(
        run(broker, store_url, "dead", "list", "--task", "cli.echo", "--json").stdout
    )
    assert [d["reason"] for d in as_json] == ["first failure"]

    shown = run(broker, store_url, "dead", "show", str(first))
    assert "KeyError: 'x'" in shown.stdout and "cli.echo" in shown.stdout
    assert run(broker, store_url, "dead", "show", "99999").returncode == 1

    retried = run(broker, store_url, "dead", "retry", str(first))
    assert retried.returncode == 0, retried.stderr
    assert "retried as task" in retried.stdout
    assert store.dead_letters.get(first).retried_task_id in retried.stdout
    twice = run(broker, store_url, "dead", "retry", str(first))
    assert twice.returncode == 1 and "already retried" in twice.stderr
    assert "dead retry --force" in twice.stderr

    asked = run(broker, store_url, "dead", "purge", "--task", "cli.other", answer="n\n")
    assert asked.returncode == 1
    assert "Delete 1 dead letter?" in asked.stdout
    assert store.dead_letters.count() == 2, "answered no: nothing purged"
    none = run(broker, store_url, "dead", "purge", "--task", "cli.nothing")
    assert (none.returncode, none.stdout.strip()) == (0, "no dead letter matches: nothing to purge")

    no_filter = run(broker, store_url, "dead", "purge", "--yes")
    assert no_filter.returncode == 2 and "--all" in no_filter.stderr
    purged = run(broker, store_url, "dead", "purge", "--retried", "--yes")
    assert purged.stdout.strip() == "purged 1 dead letter"
    assert store.dead_letters.count() == 1


def test_dead_show_in_plain_text_tells_the_retries_before_it_and_its_origin(
    broker: str, tmp_path: Path
) -> None:
    """Piped, ``dead show`` says what the web view and ``--json`` say: the retries
    that led to the dead letter (attempt, time, reason; each whole on one line) and the
    dead letter it came from when it is the retry of another."""
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    store = store_app(url)
    origin = _dead_letter(store, reason="the first time")
    reasons = [
        f"TimeoutError: the SMTP server for nobody@blackhole.example did not answer (attempt {n}/3)"
        for n in (1, 2)
    ]
    history = [[1, 1795000000.0, reasons[0]], [2, 1795000002.5, reasons[1]]]
    letter = _dead_letter(
        store,
        reason="TimeoutError: did not answer (attempts exhausted: 3/3)",
        task_id="id-again",
        options={
            "exchange": "",
            "routing_key": "celery",
            "retry_history": history,
            "retry_of": origin,
        },
        outcome="exhausted",
        exc_type="builtins.TimeoutError",
        exc_message="did not answer",
        traceback=None,
        attempts=3,
    )
    shown = run(broker, url, "dead", "show", str(letter))
    assert shown.returncode == 0, shown.stderr
    lines = shown.stdout.splitlines()
    assert f"  retry of: dead letter {origin}" in lines
    start = lines.index("retries before this (from the message's reliable header):")
    assert lines[start + 1 : start + 3] == [
        f"  attempt 1  2026-11-18 11:06:40  {reasons[0]}",
        f"  attempt 2  2026-11-18 11:06:42  {reasons[1]}",
    ]
    as_json = json.loads(run(broker, url, "dead", "show", str(letter), "--json").stdout)
    assert as_json["options"]["retry_history"] == history
    assert as_json["retry_of"] == origin
    # None kept: said so, not left out.
    first = run(broker, url, "dead", "show", str(origin)).stdout.splitlines()
    assert "retries before this: none (it ended on its first execution)" in first
    assert not any("retry of" in line for line in first)


def test_receipts_list_show_prune(broker: str, store_url: str) -> None:
    assert run(broker, store_url, "db", "upgrade").returncode == 0
    store = store_app(store_url)
    claim = store.receipts.claim("cli.echo", "echo:a", "0" * 64, "task-a", 30)
    store.receipts.complete(claim, '"a"')
    listed = run(broker, store_url, "receipts", "list", process=True)  # the entry point
    assert "echo:a" in listed.stdout and "succeeded" in listed.stdout
    shown = run(broker, store_url, "receipts", "show", "cli.echo", "echo:a")
    assert '"a"' in shown.stdout and "task-a" in shown.stdout
    kept = run(broker, store_url, "receipts", "prune")
    assert kept.stdout.startswith("pruned 0 receipts")
    pruned = run(broker, store_url, "receipts", "prune", "--older-than", "0s")
    assert pruned.stdout.startswith("pruned 1 receipt ")


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_store_unavailable_is_a_clear_error(broker: str, kind: str, tmp_path: Path) -> None:
    url = (
        f"postgresql+psycopg://nobody@127.0.0.1:{servers.free_port()}/nothing"
        if kind == "postgresql"
        else f"sqlite:///{tmp_path}/missing/dir/store.sqlite3"
    )
    result = run(broker, url, "dead", "list")
    assert result.returncode == 1
    assert "the store is unavailable" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("postgresql+pg8000://shop@127.0.0.1:1/shop", "needs pg8000, which is not installed"),
        ("mysql://shop@127.0.0.1:1/shop", "celery_reliable stores to SQLite or PostgreSQL"),
        ("sqlite//no-colon", "is not a database URL"),
    ],
)
def test_a_store_url_that_cannot_work_is_one_line(broker: str, url: str, says: str) -> None:
    result = run(broker, url, "receipts", "list")
    assert result.returncode == 1
    assert says in result.stderr
    assert "Traceback" not in result.stderr


def test_piped_listings_keep_every_value_whole_on_one_line(broker: str, tmp_path: Path) -> None:
    """Captured (not a terminal), a listing is a header and one tab-separated line per
    row: long names and reasons are never folded, so grep finds the whole row."""
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    store = store_app(url)
    task_name = "acc_app.scripted_" + "very_long_task_name_" * 5
    reason = "ConnectionError: " + "the upstream payment service did not answer " * 4
    first = _dead_letter(store, task_name=task_name, reason=reason + "\nand a second line")
    listed = run(broker, url, "dead", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split("\t") == [
        "id",
        "when",
        "task",
        "outcome",
        "attempts",
        "reason",
        "retried as",
    ]
    assert len(lines) == 2
    row = lines[1].split("\t")
    assert row[0] == str(first)
    assert row[2] == task_name
    assert row[5] == reason + "\\nand a second line"
    receipts = run(broker, url, "receipts", "list")
    assert receipts.returncode == 0, receipts.stderr
    assert receipts.stdout.splitlines()[0].startswith("task\tkey\tstate")


def test_a_command_run_in_process_says_what_its_own_process_says(
    broker: str, tmp_path: Path
) -> None:
    """The other tests run most commands in this process (tests/support/cli.py): the
    same exit code, stdout and stderr as ``python -m celery`` gives, for an answer, an
    error of ours and a usage error of click's."""
    url = f"sqlite:///{tmp_path}/store.sqlite3"
    assert run(broker, url, "db", "upgrade").returncode == 0
    for args in (("db", "current"), ("dead", "show", "4242"), ("dead", "purge", "--yes")):
        inside = run(broker, url, *args)
        alone = run(broker, url, *args, process=True)
        assert (inside.returncode, inside.stdout, inside.stderr) == (
            alone.returncode,
            alone.stdout,
            alone.stderr,
        ), args


def test_store_commands_through_clicks_runner(tmp_path: Path) -> None:
    """The same commands in-process, as a project's own test would call them."""
    from types import SimpleNamespace

    from click.testing import CliRunner

    from celery_reliable.cli import reliable

    app = Celery("runner-store", broker="memory://", set_as_current=False)
    app.conf.reliable_database_url = f"sqlite:///{tmp_path}/store.sqlite3"

    def invoke(*args: str, answer: str | None = None) -> Any:
        return CliRunner().invoke(reliable, list(args), obj=SimpleNamespace(app=app), input=answer)

    upgraded = invoke("db", "upgrade")
    assert upgraded.exit_code == 0 and f"-> {HEAD}" in upgraded.output
    assert "up to date" in invoke("db", "current").output

    store = store_for(app)
    letter = _dead_letter(store, task_name="runner.a_task_name_long_enough_to_fold", reason="boom")
    listed = invoke("dead", "list")
    assert listed.exit_code == 0
    assert listed.output.splitlines()[0] == "id\twhen\ttask\toutcome\tattempts\treason\tretried as"
    assert f"{letter}\t" in listed.output and "\trunner.a_task_name_long_enough_to_fold\t" in (
        listed.output
    )
    assert json.loads(invoke("dead", "show", str(letter), "--json").output)["reason"] == "boom"
    missing = invoke("dead", "show", "4242")
    assert (missing.exit_code, missing.output.strip()) == (1, "Error: no dead letter 4242")
    retried = invoke("dead", "retry", str(letter))
    assert retried.exit_code == 0 and "retried as task" in retried.output
    purged = invoke("dead", "purge", "--retried", answer="y\n")
    assert purged.exit_code == 0 and "purged 1 dead letter" in purged.output

    claim = store.receipts.claim("runner.echo", "k", "0" * 64, "task-k", 30)
    store.receipts.complete(claim, '"v"')
    assert "runner.echo\tk\tsucceeded" in invoke("receipts", "list").output
    assert (
        json.loads(invoke("receipts", "show", "runner.echo", "k", "--json").output)["state"]
        == "succeeded"
    )
    unknown = invoke("receipts", "show", "runner.echo", "nope")
    assert unknown.exit_code == 1 and unknown.output.count("\n") == 1
    assert invoke("receipts", "prune", "--older-than", "0s").exit_code == 0
