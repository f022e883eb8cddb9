"""pytest plugin: adds FlaskDBFix to every app that Flask-SQLAlchemy's own tests create.

``DBFIX_DROPIN_ORDER`` is ``before`` or ``after`` (relative to ``db.init_app``);
``DBFIX_DROPIN_REPORT`` names a file that receives how many apps and engines we managed,
so the caller can tell that the extension was really active.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy

from flask_uwsgi_dbfix import FlaskDBFix, engines

ORDER = os.environ["DBFIX_DROPIN_ORDER"]
_original_init_app = SQLAlchemy.init_app
_dbfix = FlaskDBFix()
_managed = {"apps": 0, "apps_without_dbfix": 0, "engines": 0}


def _add_dbfix(app: Flask) -> None:
    if "dbfix" not in app.extensions:
        _dbfix.init_app(app)
        _managed["apps"] += 1


def _init_app(self: SQLAlchemy, app: Flask) -> None:
    if ORDER == "before":
        _add_dbfix(app)
    _original_init_app(self, app)
    if ORDER == "after":
        _add_dbfix(app)
    _managed["apps_without_dbfix"] += "dbfix" not in app.extensions
    _managed["engines"] += sum(m.source == "flask-sqlalchemy" for m in engines.app_engines(app))


SQLAlchemy.init_app = _init_app  # type: ignore[method-assign]


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    with open(os.environ["DBFIX_DROPIN_REPORT"], "w") as report:
        json.dump(_managed, report)
