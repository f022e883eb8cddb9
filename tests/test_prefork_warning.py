"""The pre-fork warning's content, built from a real app on the SSL PostgreSQL.

Its once-per-startup emission under real uWSGI is in test_uwsgi_fork.py.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix, PreForkConnectionWarning, registry
from flask_uwsgi_dbfix.prefork import emit_warning, inherited_connections
from harness.postgres import PostgresServer

OTHER_PID = os.getpid() + 100_000  # a "worker": any pid that did not open the connections


def create_app(url: str, query_at_creation: bool) -> tuple[Flask, int]:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    if query_at_creation:
        with app.app_context():
            db.session.execute(text("SELECT 1"))  # MARK: opens at creation
    return app, OPENING_LINE


OPENING_LINE = next(
    number
    for number, line in enumerate(Path(__file__).read_text().splitlines(), start=1)
    if line.endswith("# MARK: opens at creation")
)


def test_warning_names_engine_masked_url_and_the_line(
    pg: PostgresServer, fresh_db: Callable[[], str]
) -> None:
    app, line = create_app(fresh_db(), query_at_creation=True)
    found = inherited_connections(registry.app_engines(app), OTHER_PID)

    with pytest.warns(PreForkConnectionWarning) as caught:
        emit_warning(found)

    (warning,) = caught
    message = str(warning.message)
    assert f"{__file__}:{line} in create_app" in message
    assert f"engine 'default' (postgresql+psycopg2://{pg.user}:***@127.0.0.1:{pg.port}/" in message
    assert "1 connection(s)" in message
    assert pg.password not in message
    # The warning points at the user's line, so `python -W` filters and IDEs land there.
    assert (warning.filename, warning.lineno) == (__file__, line)


def test_clean_app_has_nothing_to_warn_about(fresh_db: Callable[[], str]) -> None:
    app, _ = create_app(fresh_db(), query_at_creation=False)
    assert inherited_connections(registry.app_engines(app), OTHER_PID) == []


def test_connections_opened_by_this_process_are_not_inherited(
    fresh_db: Callable[[], str],
) -> None:
    app, _ = create_app(fresh_db(), query_at_creation=True)
    assert inherited_connections(registry.app_engines(app), os.getpid()) == []


def test_warning_is_also_logged_when_logging_is_configured(
    fresh_db: Callable[[], str], caplog: pytest.LogCaptureFixture
) -> None:
    app, line = create_app(fresh_db(), query_at_creation=True)
    found = inherited_connections(registry.app_engines(app), OTHER_PID)
    with caplog.at_level("WARNING", logger="flask_uwsgi_dbfix"):
        with pytest.warns(PreForkConnectionWarning):
            emit_warning(found)
    (record,) = [r for r in caplog.records if r.name == "flask_uwsgi_dbfix"]
    assert f"{__file__}:{line} in create_app" in record.getMessage()
