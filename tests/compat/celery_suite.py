"""Celery's own test suite, run plain and with ReliableTask as every app's task class.

    python -m tests.compat.celery_suite [--json FILE]

Fetches the source distribution of the *installed* Celery from PyPI (its ``t/``
folder is not in the wheel), runs ``t/unit/tasks/`` (tasks, trace, canvas, result,
chord, ...) and ``t/unit/app/test_builtins.py`` twice, and exits 1 when a test that
passes plain does not pass with ReliableTask, or when the ReliableTask run did not
actually run tasks through ReliableTask.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import tempfile
import time
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / ".cache" / "celery-suite"
SUITE_PATHS = ("t/unit/tasks", "t/unit/app/test_builtins.py")


@dataclass
class Run:
    label: str
    passed: set[str] = field(default_factory=set)
    failed: set[str] = field(default_factory=set)
    skipped: set[str] = field(default_factory=set)
    seconds: float = 0.0
    swap: dict[str, int] = field(default_factory=dict)
    #: test id -> the message of its failure or error
    messages: dict[str, str] = field(default_factory=dict)


def fetch_suite(celery_version: str) -> Path:
    """``t/`` and the pytest settings of Celery ``celery_version``, cached under .cache/."""
    target = CACHE / f"celery-{celery_version}"
    if (target / "t" / "unit").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE) as download:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "--no-binary",
                ":all:",
                f"celery=={celery_version}",
                "--dest",
                download,
            ],
            check=True,
        )
        (sdist,) = Path(download).glob("celery-*.tar.gz")
        prefix = f"celery-{celery_version}/"
        staging = Path(tempfile.mkdtemp(dir=CACHE))
        with tarfile.open(sdist) as archive:
            # Only the tests and their settings: the sdist's own celery/ package must not
            # shadow the installed one.
            members = [
                m
                for m in archive.getmembers()
                if m.name.startswith(prefix + "t/") or m.name == prefix + "pyproject.toml"
            ]
            for member in members:
                member.name = member.name[len(prefix) :]
            archive.extractall(staging, members=members, filter="data")
        staging.rename(target)
    return target


def run_suite(
    suite: Path,
    label: str,
    plugin: str | None,
    *,
    paths: tuple[str, ...] = SUITE_PATHS,
    env: dict[str, str] | None = None,
    options: tuple[str, ...] = (),
    log: Path | None = None,
) -> Run:
    """Celery's tests ``paths`` in one pytest run (with ``plugin`` loaded first): which
    passed, failed and were skipped, from its JUnit report. ``log``: pytest's output."""
    run = Run(label)
    with tempfile.TemporaryDirectory() as scratch:
        junit = Path(scratch) / "junit.xml"
        report = Path(scratch) / "swap.json"
        command = [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:celery",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            f"--junitxml={junit}",
            *options,
            *paths,
        ]
        if plugin:
            command[4:4] = ["-p", plugin]
        environment = {
            **os.environ,
            **(env or {}),
            "PYTHONPATH": str(ROOT),
            "RELIABLE_SUITE_REPORT": str(report),
        }
        started = time.monotonic()
        with open(log or os.devnull, "a", encoding="utf-8") as out:
            subprocess.run(
                command,
                cwd=suite,
                env=environment,
                stdout=out,
                stderr=out if log else None,
                check=False,
            )
        run.seconds = time.monotonic() - started
        if not junit.exists():
            raise SystemExit(f"{label}: pytest wrote no report; run it by hand in {suite}")
        for case in ET.parse(junit).getroot().iter("testcase"):
            test_id = f"{case.get('classname')}::{case.get('name')}"
            outcomes = {child.tag for child in case}
            if outcomes & {"failure", "error"}:
                run.failed.add(test_id)
                run.messages[test_id] = " ".join(
                    child.get("message") or ""
                    for child in case
                    if child.tag in ("failure", "error")
                )
            elif "skipped" in outcomes:
                run.skipped.add(test_id)
            else:
                run.passed.add(test_id)
        run.failed -= run.passed & run.failed  # a test id reported twice: keep the pass
        if report.exists():
            run.swap = json.loads(report.read_text())
    return run


def print_runs(plain: Run, reliable: Run) -> None:
    """The two runs' counts and how much went through ReliableTask."""
    for run in (plain, reliable):
        print(
            f"  {run.label:<13} {len(run.passed):>5} passed  {len(run.failed):>3} failed  "
            f"{len(run.skipped):>3} skipped  {run.seconds:6.1f} s"
        )
    swap = reliable.swap
    print(
        f"  ReliableTask run: {swap.get('task_classes', 0)} task classes, "
        f"{swap.get('executions', 0)} executions through ReliableTask"
    )


def write_figures(path: Path, plain: Run, reliable: Run, **verdict: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    figures = {
        "celery": version("celery"),
        "kombu": version("kombu"),
        "plain": {"passed": len(plain.passed), "failed": len(plain.failed)},
        "reliable": {"passed": len(reliable.passed), "failed": len(reliable.failed)},
        **verdict,
        "swap": reliable.swap,
    }
    path.write_text(json.dumps(figures, indent=2))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    options = parser.parse_args(argv)

    celery_version = version("celery")
    suite = fetch_suite(celery_version)
    # The two runs side by side (a pytest process each, on two cores): they share
    # nothing but the suite's files, which neither writes.
    with ThreadPoolExecutor(max_workers=2) as pool:
        plain_run = pool.submit(run_suite, suite, "plain Task", None)
        reliable_run = pool.submit(
            run_suite, suite, "ReliableTask", "tests.compat.reliable_default"
        )
        plain, reliable = plain_run.result(), reliable_run.result()
    regressions = sorted(plain.passed - reliable.passed)

    print(f"Celery {celery_version} (kombu {version('kombu')}): {' '.join(SUITE_PATHS)}")
    print_runs(plain, reliable)
    swap = reliable.swap
    if options.json:
        write_figures(options.json, plain, reliable, regressions=regressions)
    status = 0
    if not plain.passed:
        print("  no test passed plain: the suite did not run (see above)")
        status = 1
    if swap.get("task_classes", 0) < 100 or swap.get("executions", 0) < 100:
        print("  the ReliableTask run did not go through ReliableTask: the swap failed")
        status = 1
    if regressions:
        print(f"  {len(regressions)} pass plain but not with ReliableTask:")
        for test_id in regressions:
            print(f"    {test_id}")
        print(
            f"  reproduce: cd {suite} && PYTHONPATH={ROOT} {sys.executable} -m pytest "
            "-p no:celery -p tests.compat.reliable_default TEST_ID"
        )
        status = 1
    else:
        print("  every test that passes plain passes with ReliableTask")
    return status


if __name__ == "__main__":
    sys.exit(main())
