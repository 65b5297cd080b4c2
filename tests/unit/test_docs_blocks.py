"""Every Python block in the docs is either run by a test or announced as a fragment,
and every one is valid Python."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.docs_blocks import ROOT, doc_files, python_blocks


def _test_sources() -> str:
    here = Path(__file__).resolve()
    return "\n".join(p.read_text() for p in (ROOT / "tests").rglob("*.py") if p.resolve() != here)


def test_every_python_block_is_run_by_a_test_or_marked_a_fragment() -> None:
    sources = _test_sources()
    unrun = []
    for path in doc_files():
        for block in python_blocks(path):
            if block.fragment:
                continue
            if block.region is None:
                unrun.append(f"{block.where}: in no region and not marked <!-- fragment -->")
            elif f'"{block.region}"' not in sources:
                unrun.append(f"{block.where}: region {block.region!r}, which no test reads")
    assert not unrun, "python blocks no test runs:\n" + "\n".join(unrun)


def test_every_python_block_is_valid_python() -> None:
    broken = []
    for path in doc_files():
        for block in python_blocks(path):
            try:
                ast.parse(block.code)
            except SyntaxError as exc:
                broken.append(f"{block.where}: {exc.msg} (block line {exc.lineno})")
    assert not broken, "\n".join(broken)


def test_some_blocks_are_run() -> None:
    regions = {b.region for p in doc_files() for b in python_blocks(p) if b.region}
    assert {"testing-example", "cli-waive-example", "storage-history-example"} <= regions
