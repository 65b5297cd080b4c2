"""The docs stay true: tables in docs/ are checked against the code."""

from __future__ import annotations

import re
from pathlib import Path

from celery_reliable.backoff import delay_table, exponential, fixed, polynomial
from celery_reliable.outcomes import Outcome

DOCS = Path(__file__).resolve().parents[2] / "docs"
README = DOCS.parent / "README.md"


def _table(text: str, start: str, end: str) -> list[list[str]]:
    block = text[text.index(start) : text.index(end)]
    rows = [line for line in block.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows[2:]]


def test_backoff_table_matches_the_strategies() -> None:
    rows = _table((DOCS / "backoff.md").read_text(), "<!-- backoff-table", "<!-- /backoff-table")
    strategies = [
        exponential(),
        exponential(base=3, factor=2, cap=3600),
        polynomial(),
        fixed(30),
    ]
    expected = [delay_table(s, 10) for s in strategies]
    assert [int(r[0]) for r in rows] == list(range(1, 11))
    for column, values in enumerate(expected, start=1):
        assert [float(r[column]) for r in rows] == [float(v) for v in values]


def test_outcome_tables_name_every_outcome_and_its_state() -> None:
    for path in (DOCS / "outcomes.md", README):
        text = path.read_text()
        for outcome in Outcome:
            row = re.search(rf"^\| `{outcome.name}` \|.*$", text, re.MULTILINE)
            assert row, f"{path.name} has no row for {outcome.name}"
            assert f"`{outcome.state}`" in row.group(0), (path.name, outcome.name)
