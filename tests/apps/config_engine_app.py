"""A Flask app that keeps its own engine, shaped like the packaged app of issue 20.

Its model layer makes a plain engine with ``engine_from_config`` at import (no
Flask-SQLAlchemy), reads a settings row while the app is created (the bug), hides every
``UserWarning`` and configures logging with ``fileConfig`` after importing the package
(which disables every logger that exists by then). Environment:
  DATABASE_URL   (required)
  DBFIX_WAY      "none" (the bug, default), "extension" (``FlaskDBFix(app)``, which finds
                 no engine to manage) or "register" (``register(engine)``: the fix)
  LOGGING_INI    a ``logging.config.fileConfig`` file to load after the imports
"""

from __future__ import annotations

import logging.config
import os
import warnings

import sqlalchemy as sa
from flask import Flask, jsonify
from flask.typing import ResponseReturnValue

from flask_uwsgi_dbfix import FlaskDBFix, register

WAY = os.environ.get("DBFIX_WAY", "none")
warnings.simplefilter("ignore", UserWarning)  # the app's blanket filter
if os.environ.get("LOGGING_INI"):
    logging.config.fileConfig(os.environ["LOGGING_INI"])  # disable_existing_loggers=True

engine = sa.engine_from_config(
    {"sqlalchemy.url": os.environ["DATABASE_URL"], "sqlalchemy.pool_pre_ping": "true"},
    prefix="sqlalchemy.",
)
PROBE = sa.text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)


def create_app() -> Flask:
    app = Flask(__name__)
    print("config_engine_app: search server unreachable, search disabled")  # start-up noise
    if WAY == "extension":
        FlaskDBFix(app)
    elif WAY == "register":
        register(engine, name="settings")
    with engine.connect() as conn:  # MARK: settings row
        app.config["SERVER_VERSION"] = conn.execute(sa.text("SHOW server_version")).scalar()

    @app.get("/ping")
    def ping() -> str:
        return "pong"

    @app.get("/query")
    def query() -> ResponseReturnValue:
        try:
            with engine.connect() as conn:
                backend, ssl = conn.execute(PROBE).one()
        except Exception as exc:  # the bug shows up as any of several driver errors
            return jsonify(pid=os.getpid(), error=str(exc).strip().splitlines()[0]), 500
        return jsonify(pid=os.getpid(), backend=backend, ssl=ssl), 200

    return app


app = create_app()
