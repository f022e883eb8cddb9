"""A small Flask + Flask-SQLAlchemy service that does what real apps do at startup.

``create_app()`` creates the tables and seeds rows while the app is created, so under
uWSGI's pre-forking master the pool holds a live connection at fork time: exactly the
pattern behind ``SSL error: decryption failed or bad record mac``. ``FlaskDBFix`` makes it
safe; ``DBFIX_ENABLED=0`` in the environment turns the extension off to show the bug.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from flask import Flask, current_app, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import text
from sqlalchemy.engine import make_url
from werkzeug.exceptions import HTTPException

from flask_uwsgi_dbfix import FlaskDBFix

from .models import db, seed
from .routes import bp

__all__ = ["create_app", "database_url", "db", "dbfix"]

# Only these are copied from the environment: other DBFIX_* variables (the test harness
# has some) are not extension settings, and the extension rejects unknown DBFIX_ keys.
DBFIX_ENV_KEYS = (
    "DBFIX_ENABLED",
    "DBFIX_PREFORK_WARNING",
    "DBFIX_PID_GUARD",
    "DBFIX_CLOSE_BEFORE_FORK",
)

dbfix = FlaskDBFix()


def database_url(url: str | None = None) -> str:
    """``url`` or ``$DATABASE_URL``, with ``sslmode=require`` added for PostgreSQL when the
    URL names no sslmode: the fork bug corrupts TLS streams, and production uses TLS."""
    raw = url or os.environ.get("DATABASE_URL")
    if not raw:
        raise RuntimeError(
            "DATABASE_URL is not set; e.g. DATABASE_URL=postgresql://user:pass@host/db"
        )
    parsed = make_url(raw)
    if parsed.get_backend_name() == "postgresql" and "sslmode" not in parsed.query:
        parsed = parsed.update_query_dict({"sslmode": "require"})
    return parsed.render_as_string(hide_password=False)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """App factory. ``config`` overrides the environment (tests pass their database here)."""
    app = Flask(__name__)
    for key in DBFIX_ENV_KEYS:
        if key in os.environ:
            app.config[key] = os.environ[key]  # the extension parses 1/0/true/false/...
    app.config.update(config or {})
    app.config["SQLALCHEMY_DATABASE_URI"] = database_url(app.config.get("SQLALCHEMY_DATABASE_URI"))

    db.init_app(app)
    dbfix.init_app(app)
    app.register_blueprint(bp)
    app.register_error_handler(Exception, _error)

    with app.app_context():
        # Startup work that opens a connection and leaves it in the pool: under uWSGI the
        # master forks its workers with this connection still open.
        db.create_all()
        seed()
        app.extensions["example_app"] = {"pid": os.getpid(), "backend": _backend_pid()}
    return app


def _backend_pid() -> int | None:
    if db.engine.dialect.name != "postgresql":
        return None
    return int(db.session.execute(text("SELECT pg_backend_pid()")).scalar_one())


def _error(exc: Exception) -> ResponseReturnValue:
    """JSON errors; a server error carries the first line of the exception, which is what
    the demo's load generator groups failures by."""
    if isinstance(exc, HTTPException):
        return jsonify(error=exc.description), exc.code or 500
    current_app.logger.error("request failed: %s", exc, exc_info=exc)
    lines = str(exc).strip().splitlines()
    return jsonify(error=lines[0] if lines else type(exc).__name__), 500
