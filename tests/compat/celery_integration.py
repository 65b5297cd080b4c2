"""Celery's own integration suite, run plain and with ReliableTask as every task's class.

    python -m tests.compat.celery_integration [--json FILE] [--reruns N] [-k EXPR]

Fetches the test suite of the *installed* Celery (as ``celery_suite.py`` does), starts
a Redis server of its own, and runs ``t/integration/test_tasks.py``,
``test_canvas.py``, ``test_inspect.py``, ``test_redis_backend.py`` and
``test_backend_leak_in_fixture_teardown.py`` against it with a real
prefork worker (Celery's ``celery_session_worker``): once plain, once with
``tests.compat.reliable_default`` (every app's task class is ReliableTask). Each run
gets a Redis database of its own. ``test_backend_leak_in_fixture_teardown.py`` runs in
a session of its own: in the same session it hangs the session worker.

The suite is slow and timing-bound on a small machine (several chord tests fail plain
on 2 cores), so a test that passes plain but not with ReliableTask is run again,
alone, up to ``--reruns`` times in both modes; it is a regression when it fails every
rerun with ReliableTask. Tests that differ by design are listed in ``BY_DESIGN`` (and
in docs/compatibility.md, which a unit test holds to this list): they are reported,
not failed. Exit status 1 on any regression, or when the ReliableTask run did not run
tasks through ReliableTask.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import redis

from tests.compat.celery_suite import (
    ROOT,
    Run,
    fetch_suite,
    print_runs,
    run_suite,
    write_figures,
)
from tests.support.servers import redis_server

#: The suite's files, per pytest session.
SESSIONS: tuple[tuple[str, ...], ...] = (
    (
        "t/integration/test_tasks.py",
        "t/integration/test_canvas.py",
        "t/integration/test_inspect.py",
        # test_backend.py is the Azure Blob backend (azure SDK, an Azure URL): not ours.
        "t/integration/test_redis_backend.py",
    ),
    ("t/integration/test_backend_leak_in_fixture_teardown.py",),
)


@dataclass(frozen=True)
class ByDesign:
    why: str
    #: What its failure with ReliableTask says; any other failure is judged as usual.
    failure: str


#: Tests that pass plain and differ with ReliableTask on purpose. Each is listed in
#: docs/compatibility.md ("Celery's integration suite").
BY_DESIGN: dict[str, ByDesign] = {
    "t.integration.test_tasks.test_tasks::test_wrong_arguments": ByDesign(
        "a typing=False task called with the wrong arguments ends DISCARDED: its "
        "result.get() raises WrongArguments, a TypeError, as the test expects, and its "
        "state is DISCARDED, where the test asserts FAILURE",
        failure="assert 'DISCARDED' == 'FAILURE'",
    ),
}

RELIABLE_PLUGIN = "tests.compat.reliable_default"
CACHE = ROOT / ".cache" / "celery-integration"


@dataclass
class Verdict:
    regressions: list[str]
    flaky: dict[str, int]  # passed with ReliableTask on the Nth rerun
    by_design: list[str]


def node_id(suite: Path, test_id: str) -> str:
    """pytest's node id of a JUnit ``classname::name``: for
    ``t.integration.test_tasks.test_tasks::test_x``,
    ``t/integration/test_tasks.py::test_tasks::test_x``."""
    classname, _, name = test_id.partition("::")
    parts = classname.split(".")
    for cut in range(len(parts), 0, -1):
        path = Path(*parts[:cut]).with_suffix(".py")
        if (suite / path).is_file():
            return "::".join([path.as_posix(), *parts[cut:], name])
    raise ValueError(f"no file of the suite holds {test_id}")


class Runner:
    def __init__(self, suite: Path, url: str, keyword: str | None, logs: Path) -> None:
        self.suite = suite
        self.url = url
        self.keyword = keyword
        self.logs = logs
        self.database = 0

    def run(self, label: str, plugin: str | None, paths: tuple[str, ...]) -> Run:
        """One pytest session on a fresh Redis database."""
        self.database += 1
        url = f"{self.url}/{self.database}"
        redis.Redis.from_url(url).flushdb()
        host, port = self.url.removeprefix("redis://").split(":")
        env = {
            "TEST_BROKER": url,
            "TEST_BACKEND": url,
            # The suite's tasks.py opens its own Redis connection from these.
            "REDIS_HOST": host,
            "REDIS_PORT": port,
            # reliable_default.py: executions in the prefork children, counted here.
            "RELIABLE_SUITE_COUNTER": url,
        }
        # Celery's own pytest plugin (its fixtures; pytest-celery's, which needs Docker,
        # is off): celery_session_worker is a real worker in a thread of the session.
        options = ["-p", "celery.contrib.pytest", "--timeout=300"]
        if self.keyword:
            options += ["-k", self.keyword]
        log = self.logs / f"{label.replace(' ', '-')}-{self.database}.log"
        return run_suite(
            self.suite, label, plugin, paths=paths, env=env, options=tuple(options), log=log
        )

    def both(self, paths_per_session: tuple[tuple[str, ...], ...]) -> tuple[Run, Run]:
        plain, reliable = Run("plain Task"), Run("ReliableTask")
        for paths in paths_per_session:
            for total, plugin in ((plain, None), (reliable, RELIABLE_PLUGIN)):
                one = self.run(total.label, plugin, paths)
                total.passed |= one.passed
                total.failed |= one.failed
                total.skipped |= one.skipped
                total.messages.update(one.messages)
                total.seconds += one.seconds
                for key, value in one.swap.items():
                    total.swap[key] = total.swap.get(key, 0) + value
        return plain, reliable

    def rerun(self, test_id: str, reruns: int) -> int | None:
        """The rerun (1..reruns) on which ``test_id`` passed with ReliableTask, alone;
        None when it failed every one."""
        node = node_id(self.suite, test_id)
        for attempt in range(1, reruns + 1):
            if test_id in self.run("ReliableTask rerun", RELIABLE_PLUGIN, (node,)).passed:
                return attempt
        return None


def judge(plain: Run, reliable: Run, runner: Runner, reruns: int) -> Verdict:
    differing = sorted(plain.passed - reliable.passed)
    verdict = Verdict([], {}, [])
    for test_id in differing:
        known = BY_DESIGN.get(test_id)
        if known is not None and known.failure in reliable.messages.get(test_id, ""):
            verdict.by_design.append(test_id)
            continue
        passed_on = runner.rerun(test_id, reruns)
        if passed_on is None:
            verdict.regressions.append(test_id)
        else:
            verdict.flaky[test_id] = passed_on
    return verdict


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--reruns", type=int, default=3, help="reruns of a differing test")
    parser.add_argument("-k", dest="keyword", help="only the tests pytest's -k selects")
    options = parser.parse_args(argv)

    celery_version = version("celery")
    suite = fetch_suite(celery_version)
    logs = CACHE / f"celery-{celery_version}"
    logs.mkdir(parents=True, exist_ok=True)
    for old in logs.glob("*.log"):
        old.unlink()
    with redis_server() as url:
        runner = Runner(suite, url, options.keyword, logs)
        plain, reliable = runner.both(SESSIONS)
        verdict = judge(plain, reliable, runner, options.reruns)

    files = " ".join(Path(p).name for paths in SESSIONS for p in paths)
    print(f"Celery {celery_version} (kombu {version('kombu')}) integration suite: {files}")
    print_runs(plain, reliable)
    swap = reliable.swap
    only_reliable = sorted(reliable.passed - plain.passed)
    if only_reliable:
        print(f"  {len(only_reliable)} pass with ReliableTask only (failed plain here)")
    for test_id in verdict.by_design:
        print(f"  by design: {test_id}: {BY_DESIGN[test_id].why}")
    for test_id, attempt in verdict.flaky.items():
        print(f"  failed once, passed on rerun {attempt}: {test_id}")
    print(f"  pytest output: {logs}")
    if options.json:
        write_figures(
            options.json,
            plain,
            reliable,
            regressions=verdict.regressions,
            flaky=verdict.flaky,
            by_design=verdict.by_design,
        )
    status = 0
    if not plain.passed:
        print("  no test passed plain: the suite did not run (see the pytest output)")
        status = 1
    if swap.get("executions", 0) < 100 and not options.keyword:
        print("  the ReliableTask run did not go through ReliableTask: the swap failed")
        status = 1
    if verdict.regressions:
        print(f"  {len(verdict.regressions)} pass plain but never with ReliableTask:")
        for test_id in verdict.regressions:
            print(f"    {test_id}")
        status = 1
    elif status == 0:
        print("  every test that passes plain passes with ReliableTask (or differs by design)")
    return status


if __name__ == "__main__":
    sys.exit(main())
