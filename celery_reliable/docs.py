"""Links to the documentation site, for messages a user reads.

Pure module. A message names the page on the docs site, never a path under ``docs/``:
a project that installed celery_reliable with pip has no such folder.
"""

from __future__ import annotations

#: The ``Documentation`` URL of pyproject.toml's ``[project.urls]`` (a unit test keeps
#: the two equal).
DOCS_BASE_URL = "https://example.invalid/celery-reliable/docs"


def docs_url(page: str, anchor: str | None = None) -> str:
    """The site's URL of ``docs/<page>.md``: ``docs_url("configuration")`` is
    ``.../configuration/``, as mkdocs lays pages out (``use_directory_urls``: a page is
    a folder, ``index.md`` and a folder's ``README.md`` its folder's own page)."""
    path = page.strip("/").removesuffix(".md")
    for index in ("index", "README"):
        if path == index or path.endswith("/" + index):
            path = path[: -len(index)]
            break
    url = f"{DOCS_BASE_URL}/{path.rstrip('/') + '/' if path else ''}"
    return f"{url}#{anchor}" if anchor else url
