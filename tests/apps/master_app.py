"""Issue 7's apps: start-up work done *before* FlaskDBFix, engines used before register().

Served by real uWSGI in tests/test_master_connections.py. Environment:
  DATABASE_URL         default bind (required)
  PLAIN_DATABASE_URL   a plain engine used at import (left idle), then register()-ed
  HELD_SESSION         "1": a scoped_session queries the plain engine at import and is
                       never closed (CKAN style): checked out when the master forks
  DBFIX_FIX            "1" (default) to use FlaskDBFix, as the last line of the factory
  FAKELIB_DIR          a directory holding fakelib.py: the tables are then created by
                       that "library" (its path contains site-packages)
  BASIC_LOGGING        "1": logging.basicConfig(level=INFO), as Flask-AppBuilder apps do
  DBFIX_CLOSE_BEFORE_FORK  "0" to switch the master's closing off
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import Any

from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.orm import scoped_session, sessionmaker

from flask_uwsgi_dbfix import FlaskDBFix, register

FIX = os.environ.get("DBFIX_FIX", "1") == "1"
CLOSE_BEFORE_FORK = os.environ.get("DBFIX_CLOSE_BEFORE_FORK", "1") == "1"
BACKEND = text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)

if os.environ.get("BASIC_LOGGING") == "1":
    logging.basicConfig(level=logging.INFO)

fakelib: Any = None
if os.environ.get("FAKELIB_DIR"):
    sys.path.insert(0, os.environ["FAKELIB_DIR"])
    fakelib = importlib.import_module("fakelib")

db = SQLAlchemy()


class Item(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)


plain: Engine | None = None
Session: Any = None
if os.environ.get("PLAIN_DATABASE_URL"):
    plain = create_engine(os.environ["PLAIN_DATABASE_URL"])
    Session = scoped_session(sessionmaker(bind=plain))


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
    app.config["DBFIX_CLOSE_BEFORE_FORK"] = CLOSE_BEFORE_FORK
    db.init_app(app)
    with app.app_context():
        if fakelib is not None:
            fakelib.create_tables(db)  # MARK: library call
        else:
            db.create_all()  # MARK: create_all
        if not db.session.get(Item, 1):
            db.session.add(Item(id=1))
            db.session.commit()
        db.session.remove()
    if FIX:
        FlaskDBFix(app)  # the last line of the factory, after the start-up work
    return app


if Session is not None and os.environ.get("HELD_SESSION") == "1":
    Session.execute(text("SELECT 1"))  # MARK: held session
if plain is not None:  # (a second connection when the session holds the first)
    with plain.connect() as conn:  # MARK: plain used at import
        conn.execute(text("SELECT 1"))
app = create_app()
if FIX and plain is not None:
    register(plain, name="plain", close_before_fork=CLOSE_BEFORE_FORK)
HELD_ATTEMPTS = 0


def probe(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        backend, ssl = conn.execute(BACKEND).one()
    return {"backend": backend, "ssl": ssl}


@app.get("/ping")
def ping() -> Any:
    return jsonify(pid=os.getpid())


@app.get("/query")
def query() -> Any:
    """A query per engine, each on a connection of the worker's own pool."""
    now = {"default": probe(db.engine)}
    if plain is not None:
        now["plain"] = probe(plain)
    return jsonify(pid=os.getpid(), now=now)


@app.get("/held")
def held() -> Any:
    """Uses the scoped_session the master left open; reports instead of failing."""
    global HELD_ATTEMPTS
    HELD_ATTEMPTS += 1
    try:
        backend = Session.execute(BACKEND).one()[0]
        outcome: dict[str, Any] = {"backend": backend}
    except Exception as exc:
        Session.rollback()  # what an app's error handling does; the next one works
        outcome = {"failed": str(exc).splitlines()[0]}
    return jsonify(pid=os.getpid(), attempt=HELD_ATTEMPTS, **outcome)


@app.errorhandler(Exception)
def error(exc: Exception) -> Any:
    lines = str(exc).strip().splitlines()
    return jsonify(pid=os.getpid(), error=lines[0] if lines else type(exc).__name__), 500
