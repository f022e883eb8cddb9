"""A WSGI app with no Flask and no Flask-SQLAlchemy: a plain ``engine_from_config`` engine,
and a settings row read while the module loads (the bug), as many Pyramid and hand-written
WSGI apps do. Environment: ``DATABASE_URL`` (required)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from typing import Any

import sqlalchemy as sa

engine = sa.engine_from_config({"sqlalchemy.url": os.environ["DATABASE_URL"]})  # MARK: made
with engine.connect() as conn:  # MARK: startup
    SETTINGS = conn.execute(sa.text("SELECT current_setting('server_version')")).scalar()
PROBE = sa.text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)


def application(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    body: dict[str, Any] = {"pid": os.getpid()}
    status = "200 OK"
    if environ.get("PATH_INFO") == "/query":
        try:
            with engine.connect() as conn:
                backend, ssl = conn.execute(PROBE).one()
            body |= {"backend": backend, "ssl": ssl}
        except Exception as exc:  # the bug shows up as any of several driver errors
            status, body["error"] = "500 Internal Server Error", str(exc).strip().splitlines()[0]
    start_response(status, [("Content-Type", "application/json")])
    return [json.dumps(body).encode()]
