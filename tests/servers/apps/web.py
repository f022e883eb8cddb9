"""The web app every server test serves: queries the database while it is created (the bug).

Served by uWSGI and gunicorn, and run as ``flask --app tests.servers.apps.web``. Environment:
  DATABASE_URL   default bind (required)
  DBFIX_FIX      "1": FlaskDBFix(app); "0" (default): the bug as users hit it
  PRE_PING       "1": pool_pre_ping on the engine
  RESULTS_DIR    where the mule and the spooler append what their queries saw (JSON lines)
  MULE_QUERIES   how many queries the mule runs (it then idles)
  WEB_*          Flask config, as app.config.from_prefixed_env("WEB") reads it
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
from pathlib import Path
from typing import Any

import click
from flask import Flask, jsonify, request
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix

try:
    import uwsgi
except ImportError:  # gunicorn, the flask CLI
    uwsgi = None

PROBE = text("SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_pre_ping": os.environ.get("PRE_PING") == "1"}
app.config.from_prefixed_env("WEB")  # e.g. WEB_DBFIX_PID_GUARD=false -> DBFIX_PID_GUARD
db = SQLAlchemy(app)
if os.environ.get("DBFIX_FIX", "0") == "1":
    FlaskDBFix(app)


def probe() -> dict[str, Any]:
    """This process's pid and the backend one query ran on (raises on a database error)."""
    backend, ssl = db.session.execute(PROBE).one()
    db.session.commit()
    return {"pid": os.getpid(), "backend": backend, "ssl": ssl}


def safe_probe() -> dict[str, Any]:
    try:
        return probe()
    except Exception as exc:  # the bug shows up as any of several driver errors
        db.session.rollback()
        return {"pid": os.getpid(), "error": first_line(exc)}


def first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


with app.app_context():  # the app's own startup work: the connection workers inherit
    IMPORT_BACKEND = probe()["backend"]  # MARK: import query
    db.session.remove()


def record(kind: str, result: dict[str, Any]) -> None:
    """Append one result line for the test to read (the mule and spooler have no HTTP)."""
    results = os.environ.get("RESULTS_DIR")
    if results:
        line = json.dumps({"kind": kind, **result}) + "\n"
        with open(Path(results) / f"{kind}-{os.getpid()}.jsonl", "a") as f:
            f.write(line)


@app.get("/ping")
def ping() -> Any:
    """Readiness probe: touches no database."""
    return jsonify(pid=os.getpid())


@app.get("/query")
def query() -> Any:
    """One query; a failure is an HTTP 500 saying which process and what error."""
    sleep = request.args.get("sleep", type=float)
    if sleep:
        db.session.execute(text("SELECT pg_sleep(:s)"), {"s": sleep})
    return jsonify(probe() | {"import": IMPORT_BACKEND})


def _child_probe(conn: Any) -> None:
    with app.app_context():
        conn.send(safe_probe())
        db.session.remove()
    conn.close()


def fork_children(n: int) -> list[dict[str, Any]]:
    """Fork ``n`` processes with multiprocessing (fork start method), each querying once."""
    ctx = multiprocessing.get_context("fork")
    found = []
    for _ in range(n):
        parent_end, child_end = ctx.Pipe(duplex=False)
        child = ctx.Process(target=_child_probe, args=(child_end,))
        child.start()
        child_end.close()
        got = parent_end.recv() if parent_end.poll(20) else {"error": "child sent nothing in 20 s"}
        child.join(20)
        if child.is_alive():
            child.kill()
            child.join(5)
        parent_end.close()
        found.append(got)
    return found


@app.get("/fork")
def fork() -> Any:
    """Query, fork a child that queries, query again: both must keep their own backend."""
    before = probe()
    children = fork_children(1)
    after = safe_probe()
    return jsonify(before=before, children=children, after=after, import_=IMPORT_BACKEND)


@app.cli.command("fork-children")
@click.option("-n", default=4)
def fork_children_command(n: int) -> None:
    """The same from a CLI command: parent query, n forked children, parent query; JSON."""
    before = probe()
    children = fork_children(n)
    after = safe_probe()
    click.echo(json.dumps({"before": before, "children": children, "after": after,
                           "import": IMPORT_BACKEND}))  # fmt: skip


@app.errorhandler(Exception)
def error(exc: Exception) -> Any:
    return jsonify(pid=os.getpid(), error=first_line(exc)), 500


if uwsgi is not None and uwsgi.opt.get("spooler"):
    from uwsgidecorators import spool

    @spool  # type: ignore[misc]
    def spooled_query(arguments: dict[str, Any]) -> None:
        with app.app_context():
            record("spooler", safe_probe())
            db.session.remove()

    @app.get("/spool")
    def enqueue() -> Any:
        n = request.args.get("n", 1, type=int)
        for i in range(n):
            spooled_query.spool(i=str(i))
        return jsonify(enqueued=n)


def mule_main() -> None:
    """Run by ``--mule=tests/servers/apps/mule.py``: queries with the app's engine, then idles."""
    for _ in range(int(os.environ.get("MULE_QUERIES", "20"))):
        with app.app_context():
            record("mule", safe_probe())
            db.session.remove()
        time.sleep(0.05)
    while True:
        time.sleep(60)
