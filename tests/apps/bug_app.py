"""The bug pattern from the user report: an app that queries the database at import.

Served by real uWSGI in the tests. Environment:
  DATABASE_URL         default bind (required)
  SECOND_DATABASE_URL  optional second bind, named "second"
  PLAIN_DATABASE_URL   optional plain engine, passed to register() when the fix is on
  DBFIX_FIX            "1" to use FlaskDBFix (default "0": the bug as reported)
  IMPORT_QUERY         "0" for a clean app that opens no connection while created
  RAW_POSTFORK_HOOK    "1": the app sets uwsgi.post_fork_hook by hand before FlaskDBFix
"""

from __future__ import annotations

import os
from typing import Any

import uwsgi
from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from flask_uwsgi_dbfix import FlaskDBFix, register
from tests.fsa_compat import fsa_engines

PROBE = text(
    "SELECT pg_backend_pid(), inet_server_port(),"
    " (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)
# MariaDB/MySQL: the connection's id is its server thread, as a backend pid is PostgreSQL's.
MYSQL_PROBE = text(
    "SELECT CONNECTION_ID(), @@port, (SELECT VARIABLE_VALUE <> ''"
    " FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Ssl_cipher')"
)

FIX = os.environ.get("DBFIX_FIX", "0") == "1"
IMPORT_QUERY = os.environ.get("IMPORT_QUERY", "1") == "1"

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
if os.environ.get("SECOND_DATABASE_URL"):
    app.config["SQLALCHEMY_BINDS"] = {"second": os.environ["SECOND_DATABASE_URL"]}
db = SQLAlchemy(app)
plain: Engine | None = None
if os.environ.get("PLAIN_DATABASE_URL"):
    plain = create_engine(os.environ["PLAIN_DATABASE_URL"])
if os.environ.get("RAW_POSTFORK_HOOK") == "1":
    uwsgi.post_fork_hook = lambda: print("app's own post_fork_hook ran", flush=True)
if FIX:
    FlaskDBFix(app)
    if plain is not None:
        register(plain, name="plain")


def engines() -> dict[str, Engine]:
    found = {"default" if key is None else key: e for key, e in fsa_engines(db, app).items()}
    if plain is not None:
        found["plain"] = plain
    return found


def probe(engine: Engine) -> dict[str, Any]:
    statement = MYSQL_PROBE if engine.dialect.name in ("mysql", "mariadb") else PROBE
    with engine.connect() as conn:  # MARK: probe connects
        backend, port, ssl = conn.execute(statement).one()
    return {"backend": backend, "port": port, "ssl": bool(ssl)}


class Item(db.Model):  # type: ignore[name-defined,misc]
    id = db.Column(db.Integer, primary_key=True)


IMPORT_BACKENDS: dict[str, int] = {}
if IMPORT_QUERY:
    with app.app_context():
        db.create_all()  # MARK: default-engine pre-fork connection
        for name, engine in engines().items():
            IMPORT_BACKENDS[name] = probe(engine)["backend"]

FIRST: dict[str, dict[str, Any]] = {}


def identity() -> dict[str, Any]:
    return {"worker": uwsgi.worker_id(), "pid": os.getpid(), "import": IMPORT_BACKENDS}


@app.get("/ping")
def ping() -> Any:
    """Readiness probe: touches no database."""
    return jsonify(identity())


@app.get("/first")
def first() -> Any:
    """Diagnostics that never fail: this worker's first query per engine, or its error."""
    for name, engine in engines().items():
        if name not in FIRST:
            try:
                FIRST[name] = probe(engine)
            except Exception as exc:  # the bug shows up as any of several driver errors
                FIRST[name] = {"error": str(exc).strip().splitlines()[0]}
    return jsonify(identity() | {"first": FIRST})


@app.get("/query")
def query() -> Any:
    """A real request: a query per engine; a failure is an HTTP 500 with the error text."""
    now = {}
    for name, engine in engines().items():
        now[name] = probe(engine)
        FIRST.setdefault(name, now[name])
    return jsonify(identity() | {"now": now})


@app.get("/session")
def session_query() -> Any:
    """A query through Flask-SQLAlchemy's scoped Session, removed at app-context teardown."""
    backend, port, ssl = db.session.execute(PROBE).one()
    return jsonify(identity() | {"session": {"backend": backend, "port": port, "ssl": ssl}})


@app.errorhandler(Exception)
def error(exc: Exception) -> Any:
    lines = str(exc).strip().splitlines()
    return jsonify(identity() | {"error": lines[0] if lines else type(exc).__name__}), 500
