"""What the package index shows: its own page (PYPI.md), with no link that only works in a
checkout, and metadata that says what the package is for and where it runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
MARKDOWN_TARGET = re.compile(r"\]\(([^)\s]+)")
HTML_TARGET = re.compile(r"""(?:href|src)=["']([^"']+)""")


def relative_links(markdown: str) -> list[str]:
    """Link and image targets a page on another site cannot follow."""
    targets = MARKDOWN_TARGET.findall(markdown) + HTML_TARGET.findall(markdown)
    return [t for t in targets if not re.match(r"(https?://|mailto:|#)", t)]


def test_the_index_gets_its_own_description_with_no_relative_link() -> None:
    assert PROJECT["readme"] == "PYPI.md"
    page = (ROOT / PROJECT["readme"]).read_text()
    assert relative_links(page) == []
    assert "Until 0.1.0" not in page and "scripts/setup.sh" not in page
    for searched in ("decryption failed or bad record mac", "SSL SYSCALL error: EOF detected"):
        assert searched in page, "the errors people search for are on the page"
    assert "pip install flask-uwsgi-dbfix" in page and "FlaskDBFix(app)" in page
    assert PROJECT["urls"]["Documentation"] in page


def test_a_relative_link_or_image_is_found() -> None:
    page = "[docs](docs/cli.md) ![chart](benchmarks/results/memory.png) [ok](https://x.org)"
    assert relative_links(page + ' <img src="a.png">') == [
        "docs/cli.md",
        "benchmarks/results/memory.png",
        "a.png",
    ]


def test_metadata_says_what_it_is_for_and_where_it_runs() -> None:
    classifiers = PROJECT["classifiers"]
    assert "Operating System :: POSIX" in classifiers, "it needs fork()"
    assert any(c.startswith("Development Status :: ") for c in classifiers)
    assert any(c.startswith("Topic :: ") for c in classifiers)
    assert PROJECT["keywords"]
    assert all(url.startswith("https://") for url in PROJECT["urls"].values())


def test_development_tools_are_dependency_groups_not_extras() -> None:
    extras = PROJECT["optional-dependencies"]
    assert set(extras) == {"flask-sqlalchemy", "uwsgi"}, "extras are for what users install"
    assert {"test", "docs", "dev"} <= set(PYPROJECT["dependency-groups"])
