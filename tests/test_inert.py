"""Nothing changes until asked: importing, installing or loading the CLI plugin does nothing
to a process; switching the fix on covers what the user handed it and nothing else; the
package never writes into ``.info``; where there is no fork it does no harm.

Each check runs in a fresh interpreter, so nothing this suite did before can hide a side
effect of the import.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

# Records what a script's imports do to the process: pool listeners whose code comes from
# the package, os.register_at_fork calls, and the modules and page they load.
PROBE = """
import json, os, sys
calls = []
_register = getattr(os, "register_at_fork", None)
if _register is not None:
    def _spy(**hooks):  # the standard library registers its own (random, threading...)
        if any((getattr(f, "__module__", "") or "").startswith("flask_uwsgi_dbfix")
               for f in hooks.values()):
            calls.append(sorted(hooks))
        return _register(**hooks)
    os.register_at_fork = _spy

import sqlalchemy as sa

EVENTS = ("connect", "first_connect", "checkout", "checkin", "close", "detach", "reset")


def ours(pool):
    found = []
    for name in EVENTS:
        for fn in getattr(pool.dispatch, name, ()):
            module = getattr(fn, "__module__", "") or ""
            owner = getattr(getattr(fn, "__self__", None), "__module__", "") or ""
            if module.startswith("flask_uwsgi_dbfix") or owner.startswith("flask_uwsgi_dbfix"):
                found.append(name)
    return found


def report(**extra):
    forkwatch = sys.modules.get("flask_uwsgi_dbfix.forkwatch")
    print(json.dumps({
        "at_fork_calls": calls,
        "modules": sorted(m for m in sys.modules if m.startswith(("flask_uwsgi_dbfix",
                                                                 "flask_sqlalchemy"))),
        "page": forkwatch is not None and forkwatch._watch is not None,
        **extra,
    }))
"""


def run_probe(body: str, tmp_path: Path, **env: str) -> dict[str, Any]:
    script = tmp_path / "probe.py"
    script.write_text(PROBE + textwrap.dedent(body))
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    result["stderr"] = done.stderr
    return result


def test_importing_every_module_and_the_cli_plugin_changes_nothing(tmp_path: Path) -> None:
    seen = run_probe(
        """
        import importlib, pkgutil
        from importlib.metadata import entry_points
        import flask_uwsgi_dbfix
        for info in pkgutil.walk_packages(flask_uwsgi_dbfix.__path__, "flask_uwsgi_dbfix."):
            if info.name != "flask_uwsgi_dbfix.auto":  # importing it is the switch
                importlib.import_module(info.name)
        (plugin,) = [e for e in entry_points(group="flask.commands") if e.name == "dbfix"]
        plugin.load()
        from sqlalchemy.engine.interfaces import Dialect
        created = Dialect.__dict__["engine_created"].__func__.__qualname__
        assert created == "Dialect.engine_created", created  # no engine watched
        pool = sa.create_engine("sqlite://", poolclass=sa.pool.NullPool).pool
        report(listeners=ours(pool))
        """,
        tmp_path,
    )
    assert seen["listeners"] == []
    assert seen["at_fork_calls"] == []
    assert seen["page"] is False  # no page mapped
    assert "flask_uwsgi_dbfix.check" in seen["modules"]  # it was imported, and still inert


def test_a_worker_that_uses_the_extension_imports_no_diagnosis(tmp_path: Path) -> None:
    """What a worker imports to be fixed: the extension, not the CLI's diagnosis, and not
    Flask-SQLAlchemy unless the app does; the plugin module costs only itself."""
    seen = run_probe(
        """
        from flask import Flask
        from flask_uwsgi_dbfix import FlaskDBFix, register
        app = Flask("w")
        FlaskDBFix(app)
        register(sa.create_engine("sqlite:///" + os.path.abspath("w.db")))
        import flask_uwsgi_dbfix.commands
        report()
        """,
        tmp_path,
    )
    assert not [m for m in seen["modules"] if m.startswith("flask_uwsgi_dbfix.check")]
    assert "flask_sqlalchemy" not in seen["modules"]
    assert len(seen["at_fork_calls"]) == 1  # switched on: the hooks, once


def test_switching_on_covers_only_the_engines_handed_over(tmp_path: Path) -> None:
    """FlaskDBFix on one app and register() on one engine: a third engine keeps
    SQLAlchemy's own pool, events and .info exactly."""
    seen = run_probe(
        """
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from flask_uwsgi_dbfix import FlaskDBFix, register
        app = Flask("a")
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.abspath("a.db")
        db = SQLAlchemy(app)
        FlaskDBFix(app)
        registered = register(sa.create_engine("sqlite:///" + os.path.abspath("r.db")))
        other = sa.create_engine("sqlite:///" + os.path.abspath("o.db"), poolclass=sa.pool.NullPool)
        do_get = type(other.pool)._do_get
        with other.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            info = dict(conn.connection.info)
        with registered.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
            registered_info = json.dumps(conn.connection.info)
            record_info = dict(conn.connection._connection_record.info)
        with app.app_context():
            app_info = dict(db.session.connection().connection.info)
        report(
            other=ours(other.pool),
            registered=ours(registered.pool),
            other_do_get=other.pool._do_get.__func__ is do_get,
            infos=[info, json.loads(registered_info), record_info, app_info],
        )
        """,
        tmp_path,
    )
    assert seen["other"] == []
    assert seen["other_do_get"] is True
    assert seen["registered"] == ["connect"]
    assert seen["infos"] == [{}, {}, {}, {}]  # .info is the user's: never written


NO_FORK = """
import os
del os.fork, os.register_at_fork  # as on Windows
import logging
logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s %(message)s")
"""


def test_no_fork_no_harm(tmp_path: Path) -> None:
    """Where os.fork and os.register_at_fork do not exist: the package imports, the
    extension and register() do nothing and say once at INFO why, `flask dbfix check`
    says so and exits 0, assert_fork_safe raises its documented error."""
    seen = run_probe(
        NO_FORK
        + textwrap.dedent(
            """
        from flask import Flask
        from flask_sqlalchemy import SQLAlchemy
        from flask_uwsgi_dbfix import FlaskDBFix, register
        from flask_uwsgi_dbfix.testing import assert_fork_safe
        app = Flask("nofork")
        app.config["SQLALCHEMY_DATABASE_URI"] = "sqlite:///" + os.path.abspath("n.db")
        db = SQLAlchemy(app)
        FlaskDBFix(app)
        engine = register(sa.create_engine("sqlite:///" + os.path.abspath("e.db")))
        FlaskDBFix(Flask("second"))
        with app.app_context():
            db.session.execute(sa.text("SELECT 1"))
            listeners = ours(db.engine.pool) + ours(engine.pool)
        runner = app.test_cli_runner()
        result = runner.invoke(args=["dbfix", "check"])
        as_json = json.loads(runner.invoke(args=["dbfix", "check", "--json"]).output)
        missing = runner.invoke(args=["dbfix", "check", "--ini", "missing.ini"])
        try:
            assert_fork_safe(app)
            helper = "passed"
        except RuntimeError as exc:
            helper = str(exc)
        report(listeners=listeners, check=[result.exit_code, result.output], helper=helper,
               as_json=as_json, missing=[missing.exit_code, missing.output])
        """
        ),
        tmp_path,
    )
    assert seen["listeners"] == []
    assert seen["at_fork_calls"] == []
    said = [line for line in seen["stderr"].splitlines() if "nothing to protect" in line]
    assert len(said) == 1 and said[0].startswith("INFO flask_uwsgi_dbfix "), seen["stderr"]
    assert seen["check"] == [0, "this platform cannot fork: no worker can inherit a connection\n"]
    assert seen["as_json"]["schema_version"] == 2 and seen["as_json"]["can_fork"] is False
    assert seen["as_json"]["verdict"]["exit_code"] == 0
    assert seen["missing"][0] == 2 and "missing.ini" in seen["missing"][1]  # bad input anywhere
    assert "needs os.fork()" in seen["helper"]


def test_without_a_fork_wiped_page_the_guard_asks_the_kernel(
    tmp_path: Path, fresh_db: Callable[[], str]
) -> None:
    """An older kernel (or macOS) refuses MADV_WIPEONFORK: the guard falls back to
    os.getpid() per checkout and still gives a child that no hook saw its own connection,
    against the real SSL PostgreSQL."""
    seen = run_probe(
        """
        import mmap

        class OldKernelPage(mmap.mmap):
            def madvise(self, option, *args):
                if option == 18:  # MADV_WIPEONFORK: EINVAL before Linux 4.14
                    raise OSError(22, "Invalid argument")
                return super().madvise(option, *args)

        mmap.mmap = OldKernelPage
        from flask_uwsgi_dbfix import forkwatch
        from tests.test_fork_inprocess import backend, guard_only, in_child, raw_fork
        engine = sa.create_engine(os.environ["DB_URL"], pool_size=1, max_overflow=0)
        guard_only(engine)
        parent = backend(engine)
        child = in_child(lambda: {"backend": backend(engine)}, raw_fork)
        report(page_none=forkwatch.watch().page is None, parent=parent, child=child,
               after=backend(engine))
        engine.dispose()
        """,
        tmp_path,
        DB_URL=fresh_db(),
    )
    assert seen["page_none"] is True
    assert "error" not in seen["child"], seen["child"]
    assert seen["child"]["backend"][0] != seen["parent"][0]
    assert seen["after"] == seen["parent"]  # the parent's connection still works
