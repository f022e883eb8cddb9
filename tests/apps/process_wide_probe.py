"""Run in a fresh interpreter by tests/test_process_wide.py: an "app" that never mentions
flask-uwsgi-dbfix makes every kind of engine, connects each, forks, and prints as JSON what
the child and the parent saw.

Environment:
  DATABASE_URL   psycopg2 URL of the suite's PostgreSQL (SSL)
  PROBE_IMPORT   "1": import flask_uwsgi_dbfix.auto first (a deployment's one line);
                 "0": rely on dbfix-run's sitecustomize, or on nothing (the control)
  PROBE_FORK     "os" (Python's at-fork hooks run) or "raw" (libc fork: no hook runs)
"""

from __future__ import annotations

import os

if os.environ.get("PROBE_IMPORT") == "1":
    import flask_uwsgi_dbfix.auto  # noqa: F401  (the switch, before the app's imports)

import asyncio
import ctypes
import gc
import json
import sys
import warnings
from typing import Any

import sqlalchemy as sa
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.orm import Session

warnings.simplefilter("default")  # the test reads every warning on stderr
URL = os.environ["DATABASE_URL"]
PROBE = sa.text("SELECT pg_backend_pid()")

# -- the app's engines, made four ways -----------------------------------------------------
plain = sa.create_engine(URL)
from_config = sa.engine_from_config({"db.url": URL, "db.pool_pre_ping": "true"}, prefix="db.")
# SQLAlchemy 1.4 has no psycopg (3) dialect: the legacy stack has no async engine here.
ASYNC = sa.__version__ >= "2"
async_engine = create_async_engine(URL.replace("+psycopg2", "+psycopg")) if ASYNC else None
app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = URL
app.config["SQLALCHEMY_BINDS"] = {"second": URL}
db = SQLAlchemy(app)


def backend(engine: sa.Engine) -> int:
    with engine.connect() as conn:  # MARK: backend connects
        return int(conn.execute(PROBE).scalar_one())


async def async_backend() -> int:
    assert async_engine is not None
    async with async_engine.connect() as conn:
        return int((await conn.execute(PROBE)).scalar_one())


def second_bind() -> sa.Engine:
    if hasattr(db, "engines"):  # Flask-SQLAlchemy 3.x
        return db.engines["second"]  # type: ignore[no-any-return]
    return db.get_engine(app, bind="second")  # type: ignore[no-any-return]  # 2.x


def backends() -> dict[str, int]:
    with app.app_context():
        found = {
            "plain": backend(plain),
            "from_config": backend(from_config),
            **({"async": asyncio.run(async_backend())} if ASYNC else {}),
            "fsa_second": backend(second_bind()),
        }
    return found


# -- start-up work before the fork: idle connections, one held Connection, one Session ------
before = backends()  # MARK: idle connections opened before the fork
held = plain.connect()  # the pooled connection backend() opened, held across the fork
held_backend = int(held.execute(PROBE).scalar_one())
# A plain Session on the Flask-SQLAlchemy default engine (db.session is scoped: a forked
# child of Flask-SQLAlchemy 2.x may get a new one), its transaction left open.
with app.app_context():
    session = Session(bind=db.engine)
session_backend = int(session.execute(PROBE).scalar_one())  # MARK: a Session held across


def raw_fork() -> int:
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.fork.restype = ctypes.c_int
    return int(libc.fork())


def in_child() -> dict[str, Any]:
    found: dict[str, Any] = {"backends": backends()}
    if os.environ.get("PROBE_FORK") == "raw":
        # No fork hook ran: nothing can take a connection away from a Session that already
        # holds it (docs/limitations.md); the checkout guard covers only new checkouts.
        return found
    try:
        found["session_first"] = int(session.execute(PROBE).scalar_one())
    except Exception as exc:
        from flask_uwsgi_dbfix import HeldAcrossForkError

        ours = isinstance(getattr(exc, "orig", None), HeldAcrossForkError)
        found["session_first"] = "HeldAcrossForkError" if ours else repr(exc)
        session.rollback()
    found["session_after_rollback"] = int(session.execute(PROBE).scalar_one())
    return found


def managed() -> list[list[str]]:
    try:
        from flask_uwsgi_dbfix import engines
    except ImportError:
        return []
    if "flask_uwsgi_dbfix.engines" not in sys.modules:
        return []
    return [[m.name, m.source] for m in engines.all_engines()]


read_fd, write_fd = os.pipe()
pid = raw_fork() if os.environ.get("PROBE_FORK") == "raw" else os.fork()
if pid == 0:
    os.close(read_fd)
    try:
        result = in_child()
    except BaseException as exc:
        result = {"error": f"{type(exc).__name__}: {exc}"}
    gc.collect()  # what an exiting worker does to whatever it dropped
    os.write(write_fd, json.dumps(result).encode())
    os._exit(0)
os.close(write_fd)
with os.fdopen(read_fd, "rb") as pipe:
    child = json.loads(pipe.read())
os.waitpid(pid, 0)


def parent_query(connection: Any) -> int | str:
    """The parent's held Connection or Session, once more; without the fix the child may
    have broken it (the control test), so an error is an answer too."""
    try:
        return int(connection.execute(PROBE).scalar_one())
    except Exception as exc:
        return str(exc).strip().splitlines()[0]


engines_managed = managed()
after = {"held": parent_query(held), "session": parent_query(session)}
# Which of the start-up backends still exist, now that the child is gone (a role sees its
# own sessions in pg_stat_activity): a child that closed one would have ended it.
ALIVE = sa.text("SELECT pid FROM pg_stat_activity WHERE pid = ANY(:pids)")
with sa.create_engine(URL, poolclass=sa.pool.NullPool).connect() as fresh:
    alive = sorted(fresh.execute(ALIVE, {"pids": sorted(set(before.values()))}).scalars())
if async_engine is not None:
    asyncio.run(async_engine.dispose())
print(
    json.dumps(
        {
            "parent_pid": os.getpid(),
            "before": before,
            "held": held_backend,
            "session": session_backend,
            "child": child,
            "after": after,
            "alive": alive,
            "managed": engines_managed,
        }
    )
)
