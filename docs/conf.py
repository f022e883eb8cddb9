"""Sphinx configuration: Markdown pages (MyST), API from docstrings, runnable examples.

Build and run the examples (warnings are errors):
    .venv/bin/python -m sphinx -W --keep-going -b html docs docs/_build/html
    .venv/bin/python -m sphinx -W --keep-going -b doctest docs docs/_build/doctest
"""

from __future__ import annotations

import doctest
import os
import sys
from importlib.metadata import version as _version
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # the package and example_app, from this checkout

project = "flask-uwsgi-dbfix"
author = "flask-uwsgi-dbfix contributors"
copyright = "2026, " + author
release = _version("flask-uwsgi-dbfix")
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.doctest",
    "sphinx.ext.intersphinx",
]

# Flask, SQLAlchemy and Python names link to their docs where the build may use the network
# (Read the Docs sets READTHEDOCS). CI builds offline: there the names stay plain text, and a
# reference Sphinx cannot resolve is no warning (nitpicky is off), so -W holds either way.
intersphinx_mapping = {
    "python": ("https://docs.python.org/3", None),
    "flask": ("https://flask.palletsprojects.com/en/stable/", None),
    "sqlalchemy": ("https://docs.sqlalchemy.org/en/20/", None),
    "flask_sqlalchemy": ("https://flask-sqlalchemy.readthedocs.io/en/stable/", None),
}
if not (os.environ.get("READTHEDOCS") or os.environ.get("DBFIX_DOCS_INTERSPHINX")):
    intersphinx_mapping = {}

source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

myst_heading_anchors = 3  # [text](page.md#a-heading) links to headings
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": False}

# Examples run by `sphinx -b doctest`: each page's blocks share one namespace. Sphinx's
# default flags include IGNORE_EXCEPTION_DETAIL, which would not compare error messages.
doctest_default_flags = doctest.ELLIPSIS | doctest.DONT_ACCEPT_TRUE_FOR_1
doctest_global_setup = """
import os
import tempfile
"""

html_theme = "alabaster"
html_title = f"flask-uwsgi-dbfix {release}"
html_static_path: list[str] = []
