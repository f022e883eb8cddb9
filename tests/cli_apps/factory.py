"""An app factory whose start-up behaviour each test picks.

Lines that open connections carry a ``MARK:`` comment so tests can find their line
numbers instead of hard-coding them.
"""

from __future__ import annotations

from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text
from sqlalchemy.pool import QueuePool

from flask_uwsgi_dbfix import FlaskDBFix
from flask_uwsgi_dbfix.commands import dbfix_cli


def create_app(
    database_url: str,
    *,
    query: bool = False,
    hold: bool = False,
    enabled: bool = True,
    extension: bool = True,
    engine_options: dict[str, Any] | None = None,
    close_before_fork: bool = True,
) -> Flask:
    """``query``: run a query while creating the app (idle connection left in the pool);
    ``hold``: keep a Connection checked out; ``enabled``: DBFIX_ENABLED."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url
    options = dict(engine_options or {})
    if database_url.startswith("sqlite:///"):  # a file: SQLAlchemy 1.4 would not pool it
        options.setdefault("poolclass", QueuePool)
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = options
    app.config["DBFIX_ENABLED"] = enabled
    app.config["DBFIX_CLOSE_BEFORE_FORK"] = close_before_fork
    db = SQLAlchemy(app)
    if extension:
        FlaskDBFix(app)
    else:  # init_app adds the group; without the extension it is added by hand
        app.cli.add_command(dbfix_cli)
    with app.app_context():
        if query:
            db.session.execute(text("SELECT 1"))  # MARK: query
            db.session.remove()
        if hold:
            app.extensions["held"] = db.engine.connect()  # MARK: hold
    return app
