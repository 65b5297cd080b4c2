"""Messages link to the docs site's pages (``celery_reliable.docs.docs_url``), which
exist, at the address mkdocs gives them."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from celery_reliable.docs import DOCS_BASE_URL, docs_url

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"


@pytest.mark.parametrize(
    ("page", "anchor", "url"),
    [
        ("configuration", None, f"{DOCS_BASE_URL}/configuration/"),
        ("configuration.md", None, f"{DOCS_BASE_URL}/configuration/"),
        ("storage", "outcome-history", f"{DOCS_BASE_URL}/storage/#outcome-history"),
        ("index", None, f"{DOCS_BASE_URL}/"),
        ("grafana/README.md", None, f"{DOCS_BASE_URL}/grafana/"),
        ("grafana", None, f"{DOCS_BASE_URL}/grafana/"),
    ],
)
def test_docs_url_is_the_mkdocs_address_of_the_page(
    page: str, anchor: str | None, url: str
) -> None:
    assert docs_url(page, anchor) == url


def test_the_base_url_is_pyprojects_documentation_url() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    urls = pyproject[pyproject.index("[project.urls]") :]
    documentation = re.search(r'^Documentation = "([^"]+)"', urls, re.MULTILINE)
    assert documentation is not None
    assert documentation.group(1) == DOCS_BASE_URL


def test_mkdocs_lays_pages_out_as_folders() -> None:
    # docs_url assumes use_directory_urls (mkdocs' default): configuration/, not .html.
    class Loader(yaml.SafeLoader):
        pass

    # mkdocs.yml may hold !!python/name tags (pymdownx): any unknown tag reads as None.
    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    config = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)
    assert config.get("use_directory_urls", True) is True


def _linked_pages() -> list[str]:
    """The pages of every ``docs_url("page", ...)`` call in the package."""
    pages = []
    for path in (ROOT / "celery_reliable").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Name)
                and node.func.id == "docs_url"
                and node.args
                and isinstance(node.args[0], ast.Constant)
            ):
                pages.append(str(node.args[0].value))
    return pages


def test_every_linked_page_exists() -> None:
    pages = _linked_pages()
    assert "configuration" in pages
    for page in (page.removesuffix(".md") for page in pages):
        assert (DOCS / f"{page}.md").is_file() or (DOCS / page / "README.md").is_file(), page
