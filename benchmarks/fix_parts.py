"""What the fix does, and what each part costs, timed in-process on a SQLite file.

The fix works at three moments: once when the app is created (``FlaskDBFix(app)``), once
per worker right after the fork (forget the inherited connections), and at every new
connection (stamp it) and every checkout (the pid guard, see pid_guard.py). Nothing else
runs per request, which is why the server figures cannot tell the fix from no fix.

    python -m benchmarks.fix_parts
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text

from flask_uwsgi_dbfix import DBFixConfig, FlaskDBFix, PreForkConnectionWarning, forkhooks
from flask_uwsgi_dbfix.engines import ManagedEngine


def _best_ms(fn: Callable[[], Any], repeat: int) -> dict[str, float]:
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1000)
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def _app(path: str) -> tuple[Flask, SQLAlchemy]:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{path}"
    return app, SQLAlchemy(app)


def run(repeat: int = 30) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "parts.db")

        def init_app() -> dict[str, float]:
            times = []
            for _ in range(repeat):
                app, _ = _app(path)  # made outside the timing: only init_app is timed
                t = time.perf_counter()
                FlaskDBFix(app)
                times.append((time.perf_counter() - t) * 1000)
            return {"min": min(times), "median": statistics.median(times), "max": max(times)}

        def new_connection(tracked: bool) -> Callable[[], None]:
            engine = create_engine(f"sqlite:///{path}")
            if tracked:
                ManagedEngine(engine, "bench", "register", DBFixConfig(), os.getpid()).start(engine)

            def connect() -> None:
                engine.dispose()  # so the next connect() opens a new connection
                engine.connect().close()

            return connect

        result: dict[str, Any] = {
            "FlaskDBFix(app) ms": init_app(),
            "new connection, untracked ms": _best_ms(new_connection(False), repeat),
            "new connection, tracked ms": _best_ms(new_connection(True), repeat),
            "after fork: forget inherited ms": _after_fork(path, repeat),
        }
    return result


def _after_fork(path: str, repeat: int) -> dict[str, float]:
    """In a forked child, the post-fork work for one engine holding one idle connection."""
    times = []
    app, db = _app(path)
    FlaskDBFix(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()
    for _ in range(repeat):
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", PreForkConnectionWarning)
                    t = time.perf_counter()
                    forkhooks.forget_inherited_connections()
                    ms = (time.perf_counter() - t) * 1000
                os.write(write, repr(ms).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read) as f:
            times.append(float(f.read() or "nan"))
        os.waitpid(pid, 0)
    return {"min": min(times), "median": statistics.median(times), "max": max(times)}


def format_report(data: dict[str, Any]) -> str:
    lines = ["what the fix itself costs (in-process, SQLite file; ms min/median/max):"]
    for name, s in data.items():
        lines.append(f"  {name:34s} {s['min']:7.3f} {s['median']:7.3f} {s['max']:7.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_report(run()))
