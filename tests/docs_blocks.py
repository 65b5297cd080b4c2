"""The Python code blocks of the docs: the ones tests run, found by their markers.

A block meant to run sits in a named region, ``<!-- name -->`` ... ``<!-- /name -->``,
which a test reads with :func:`marked_block`. A block that is an excerpt, not meant to
run alone, is announced by ``<!-- fragment -->`` on the line before it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
FRAGMENT = "<!-- fragment -->"
_REGION = re.compile(r"^\s*<!-- ([a-z0-9-]+) -->\s*$")


def doc_files() -> list[Path]:
    return [*sorted(DOCS.rglob("*.md")), ROOT / "README.md"]


def marked_block(path: Path, name: str, language: str = "python") -> str:
    """The one ```python block (or ```text, ...) between ``<!-- name -->`` and
    ``<!-- /name -->``."""
    text = path.read_text()
    region = text[text.index(f"<!-- {name} -->") : text.index(f"<!-- /{name} -->")]
    fence = f"```{language}\n"
    start = region.index(fence) + len(fence)
    return _dedent_block(region[start : region.rindex("```")])


def _dedent_block(code: str) -> str:
    lines = code.splitlines()
    indent = min((len(x) - len(x.lstrip()) for x in lines if x.strip()), default=0)
    return "\n".join(x[indent:] for x in lines) + "\n"


@dataclass(frozen=True)
class Block:
    path: Path
    line: int
    code: str
    #: The region it sits in (a block some test runs), or None.
    region: str | None
    fragment: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def python_blocks(path: Path) -> list[Block]:
    lines = path.read_text().splitlines()
    blocks = []
    open_regions: list[str] = []
    previous = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        region = _REGION.match(line)
        if region and region.group(1) != "fragment":
            open_regions.append(region.group(1))
        elif stripped.startswith("<!-- /") and open_regions:
            open_regions.pop()
        if stripped.startswith("```python"):
            end = i + 1
            while not lines[end].strip().startswith("```"):
                end += 1
            code = _dedent_block("\n".join(lines[i + 1 : end]))
            blocks.append(
                Block(
                    path,
                    i + 1,
                    code,
                    open_regions[-1] if open_regions else None,
                    previous == FRAGMENT,
                )
            )
            i = end
        if stripped:
            previous = stripped
        i += 1
    return blocks
