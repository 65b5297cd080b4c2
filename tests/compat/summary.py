"""The version matrix's figures as one Markdown table (``make compat`` prints it).

    python -m tests.compat.summary 5.4 5.5 5.6 5.7

Reads, per Celery minor, ``.cache/compat/<minor>-suite.xml`` (this project's suite,
JUnit XML from pytest) and ``.cache/compat/<minor>-celery.json`` (from
``celery_suite --json``). The outbox's tests (``tests/integration/test_outbox*.py``:
its hook into ``send_task_message`` and kombu's ``Producer._publish``) are counted
apart too; exits 1 when a minor has no figures, any failure, or ran none of them.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

FIGURES = Path(__file__).resolve().parents[2] / ".cache" / "compat"


#: The JUnit class names of the outbox's test modules.
OUTBOX_TESTS = "tests.integration.test_outbox"


def suite_counts(path: Path, only: str = "") -> tuple[int, int, int]:
    """(passed, failed, skipped) from pytest's JUnit XML (of the test cases whose
    class name starts with ``only``)."""
    passed = failed = skipped = 0
    for case in ET.parse(path).getroot().iter("testcase"):
        if not case.get("classname", "").startswith(only):
            continue
        tags = {child.tag for child in case}
        if tags & {"failure", "error"}:
            failed += 1
        elif "skipped" in tags:
            skipped += 1
        else:
            passed += 1
    return passed, failed, skipped


def main(minors: list[str]) -> int:
    status = 0
    print(
        "| Celery (kombu) | this project's suite | of which the outbox's "
        "| Celery's tests, plain Task | with ReliableTask | pass plain only |"
    )
    print("|---|---|---|---|---|---|")
    for minor in minors:
        suite, celery = FIGURES / f"{minor}-suite.xml", FIGURES / f"{minor}-celery.json"
        if not suite.exists() or not celery.exists():
            print(f"| {minor} | no figures | | | | |")
            status = 1
            continue
        passed, failed, skipped = suite_counts(suite)
        outbox = suite_counts(suite, OUTBOX_TESTS)
        figures = json.loads(celery.read_text())
        plain, reliable = figures["plain"], figures["reliable"]
        regressions = len(figures["regressions"])
        print(
            f"| {figures['celery']} ({figures['kombu']}) "
            f"| {passed} passed, {failed} failed, {skipped} skipped "
            f"| {outbox[0]} passed, {outbox[1]} failed, {outbox[2]} skipped "
            f"| {plain['passed']} passed, {plain['failed']} failed "
            f"| {reliable['passed']} passed, {reliable['failed']} failed | {regressions} |"
        )
        if failed or regressions or not outbox[0]:
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
