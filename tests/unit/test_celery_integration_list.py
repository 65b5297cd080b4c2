"""The integration-suite comparison's list of differences by design is the one the
docs give (docs/compatibility.md), and its test ids map to the suite's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.compat.celery_integration import BY_DESIGN, node_id

DOC = Path(__file__).resolve().parents[2] / "docs" / "compatibility.md"


@pytest.mark.parametrize("test_id", sorted(BY_DESIGN))
def test_each_difference_by_design_is_documented(test_id: str) -> None:
    name = test_id.rsplit("::", 1)[1]
    section = DOC.read_text().split("### Celery's integration suite", 1)[1]
    assert f"::{name}`" in section, f"docs/compatibility.md does not list {name}"


def test_node_ids_follow_the_suites_files(tmp_path: Path) -> None:
    (tmp_path / "t" / "integration").mkdir(parents=True)
    (tmp_path / "t" / "integration" / "test_tasks.py").write_text("")
    assert (
        node_id(tmp_path, "t.integration.test_tasks.test_tasks::test_wrong_arguments")
        == "t/integration/test_tasks.py::test_tasks::test_wrong_arguments"
    )
    assert (
        node_id(tmp_path, "t.integration.test_tasks::test_plain[1]")
        == "t/integration/test_tasks.py::test_plain[1]"
    )
    with pytest.raises(ValueError, match="no file"):
        node_id(tmp_path, "t.integration.test_missing::test_x")
