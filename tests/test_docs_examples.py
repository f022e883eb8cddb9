"""Every Python example in the docs either runs in the docs build or says why it does not.

A ```` ```{testcode} ```` block runs in ``sphinx -b doctest`` (the ``docs`` leg); a plain
```` ```python ```` block does not, so it must sit right under a MyST comment
``% not run: <why>`` (a broken copy-paste example is what a new user meets first).
"""

from __future__ import annotations

import re
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"
PLAIN_PYTHON = re.compile(r"^```(python|py|python3)\s*$")
REASON = re.compile(r"^% not run: \S.{10,}$")


def unexplained_examples(text: str) -> list[int]:
    """Line numbers of plain Python blocks with no ``% not run:`` line above them."""
    lines = text.splitlines()
    return [
        number
        for number, line in enumerate(lines, start=1)
        if PLAIN_PYTHON.match(line) and not (number > 1 and REASON.match(lines[number - 2]))
    ]


def test_every_plain_python_block_says_why_it_is_not_run() -> None:
    pages = sorted(DOCS.rglob("*.md"))
    assert len(pages) > 10
    unexplained = {
        str(page.relative_to(DOCS)): found
        for page in pages
        if (found := unexplained_examples(page.read_text()))
    }
    assert unexplained == {}, (
        f"python blocks the docs build does not run, without a reason: {unexplained}"
    )


def test_a_block_without_its_reason_is_found() -> None:
    assert unexplained_examples("text\n\n```python\nprint(1)\n```\n") == [3]
    assert unexplained_examples("% not run: it needs a broker\n```python\nx\n```\n") == []
    assert unexplained_examples("% not run:\n```python\nx\n```\n") == [2]
