"""The pre-fork warning's content, built from a real app on the SSL PostgreSQL.

Its once-per-startup emission under real uWSGI is in test_uwsgi_fork.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix, PreForkConnectionWarning, engines
from flask_uwsgi_dbfix.prefork import emit_warning, inherited_connections
from harness.postgres import PostgresServer, default_driver
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

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
    found = inherited_connections(engines.app_engines(app), OTHER_PID)

    with pytest.warns(PreForkConnectionWarning) as caught:
        emit_warning(found)

    (warning,) = caught
    message = str(warning.message)
    assert f"{__file__}:{line} in create_app" in message
    url = f"{default_driver()}://{pg.user}:***@127.0.0.1:{pg.port}/"
    assert f"engine 'default' ({url}" in message
    assert "1 connection(s)" in message
    assert pg.password not in message
    # The warning points at the user's line, so `python -W` filters and IDEs land there.
    assert (warning.filename, warning.lineno) == (__file__, line)


def own_engines(app: Flask) -> list[engines.ManagedEngine]:
    """The app's engines, without the register()-ed engines of other tests."""
    return [m for m in engines.app_engines(app) if m.source != "register"]


def test_clean_app_has_nothing_to_warn_about(fresh_db: Callable[[], str]) -> None:
    app, _ = create_app(fresh_db(), query_at_creation=False)
    assert inherited_connections(own_engines(app), OTHER_PID) == []


def test_connections_opened_by_this_process_are_not_inherited(
    fresh_db: Callable[[], str],
) -> None:
    app, _ = create_app(fresh_db(), query_at_creation=True)
    assert inherited_connections(own_engines(app), os.getpid()) == []


SHOW_ONCE = """
import logging, os, sys
from flask_uwsgi_dbfix import engines
from flask_uwsgi_dbfix.prefork import emit_warning, inherited_connections
from tests.test_prefork_warning import create_app
FORMAT = "LOG %(levelname)s %(name)s %(pathname)s:%(lineno)d %(funcName)s: %(message)s"
if sys.argv[1] == "basicConfig":
    logging.basicConfig(format=FORMAT)
elif sys.argv[1] == "captureWarnings":
    logging.basicConfig(format=FORMAT)
    logging.captureWarnings(True)
app, line = create_app(os.environ["DATABASE_URL"], query_at_creation=True)
emit_warning(inherited_connections(engines.app_engines(app), os.getpid() + 100_000))
"""


@pytest.mark.parametrize("logging_setup", ["none", "basicConfig", "captureWarnings"])
def test_the_warning_is_printed_once_however_logging_is_set_up(
    fresh_db: Callable[[], str], logging_setup: str
) -> None:
    """An app that calls logging.basicConfig (Flask-AppBuilder does) used to get it twice:
    once from Python's warning display, once from logging."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run(
        [sys.executable, "-c", SHOW_ONCE, logging_setup],
        cwd=root,
        env={**os.environ, "DATABASE_URL": fresh_db(), "PYTHONPATH": str(root)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    output = result.stdout + result.stderr
    assert output.count("PreForkConnectionWarning") == 1, output
    assert output.count(f"{__file__}:{OPENING_LINE} in create_app") == 1, output
    # With logging configured, the one copy is in the app's log format, and the record
    # is placed at the app's line, not in the package's (or logging's) own file.
    assert ("LOG WARNING " in output) is (logging_setup != "none"), output
    if logging_setup != "none":
        assert f" {__file__}:{OPENING_LINE} create_app: " in output, output
    # The message ends with its advice, not with a stray copy of the connecting line.
    assert 'db.session.execute(text("SELECT 1"))' not in output, output
    assert "To change: " in output.rstrip().splitlines()[-1], output
