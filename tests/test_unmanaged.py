"""Engines the package does not manage (issue 20): an app that keeps its own engine.

``tests/apps/config_engine_app.py`` is shaped like the packaged app that showed the gaps: a
plain ``engine_from_config`` engine made at import, a settings row read while the app is
created, a blanket ``ignore UserWarning`` filter and ``fileConfig`` after importing the
package. ``flask dbfix check`` must call it unsafe, ``FlaskDBFix(app)`` must say that it
covers nothing, and the warning must reach the operator through the app's filters and
logging. The check and ``assert_fork_safe`` must agree on every shape of app.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection

from flask_uwsgi_dbfix import FlaskDBFix, register
from flask_uwsgi_dbfix.check import build_report
from flask_uwsgi_dbfix.check.report import exit_code
from flask_uwsgi_dbfix.testing import assert_fork_safe
from flask_uwsgi_dbfix.unmanaged import import_path
from harness.load import run_load
from harness.postgres import PostgresServer
from harness.uwsgi import UwsgiServer, app_args, start_uwsgi
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture
from tests.pgstat import backends_of

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "tests" / "apps" / "config_engine_app.py"
LOGGING_INI = ROOT / "tests" / "apps" / "config_engine_logging.ini"
ENGINE_PATH = "tests.apps.config_engine_app.engine"
UNCOVERED = "FlaskDBFix manages no engine in this process"
WARNING_NAME = "PreForkConnectionWarning"


def settings_line() -> int:
    for number, line in enumerate(APP.read_text().splitlines(), start=1):
        if "# MARK: settings row" in line:
            return number
    raise AssertionError(f"no MARK in {APP}")


# -- flask dbfix check on the app as shipped, and fixed --------------------------------


def run_check(pg: PostgresServer, tmp_path: Path, way: str) -> tuple[int, dict[str, object]]:
    """``flask dbfix check --json`` on the app in a fresh process (no uwsgi.ini in its
    working directory: the check assumes a forking server); stdout is the JSON alone."""
    done = check_process(pg, tmp_path, way, "--json")
    return done.returncode, json.loads(done.stdout)


def check_process(
    pg: PostgresServer, tmp_path: Path, way: str, *args: str
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DATABASE_URL": pg.url(),
        "DBFIX_WAY": way,
        "PYTHONPATH": str(ROOT),
        "FLASK_APP": "tests.apps.config_engine_app:app",
    }
    done = subprocess.run(
        [sys.executable, "-m", "flask", "dbfix", "check", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert pg.password not in done.stdout + done.stderr
    return done


def findings(report: dict[str, object], severity: str) -> list[dict[str, str]]:
    found = report["findings"]
    assert isinstance(found, list)
    return [f for f in found if f["severity"] == severity]


@pytest.mark.parametrize("way", ["none", "extension"])
def test_check_fails_the_app_that_keeps_its_own_engine(
    pg: PostgresServer, tmp_path: Path, way: str
) -> None:
    """As shipped (and with a FlaskDBFix that finds nothing to manage) the master holds a
    connection every worker will share: an error naming the engine and the line."""
    code, report = run_check(pg, tmp_path, way)
    assert code == 1, report
    (error,) = [f for f in findings(report, "error") if f["code"] == "prefork-connection"]
    assert f"Engine '{ENGINE_PATH}'" in error["message"]
    assert f"config_engine_app.py:{settings_line()} in create_app" in error["message"]
    assert f"flask_uwsgi_dbfix.register({ENGINE_PATH})" in error["fix"]
    assert "import = flask_uwsgi_dbfix.auto" in error["fix"]


def test_check_passes_the_app_once_its_engine_is_registered(
    pg: PostgresServer, tmp_path: Path
) -> None:
    code, report = run_check(pg, tmp_path, "register")
    assert code == 0, report
    assert findings(report, "error") == []
    (warning,) = findings(report, "warning")
    assert warning["code"] == "prefork-connection"  # safe, but the master keeps one open


def test_the_report_stands_apart_from_the_apps_start_up_noise(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """What the app prints while it loads goes to stderr; the report on stdout opens with
    its header and ends with the verdict, so it reads whole even in one terminal."""
    done = check_process(pg, tmp_path, "none")
    assert "search server unreachable" in done.stderr
    assert "search server unreachable" not in done.stdout
    lines = done.stdout.strip().splitlines()
    assert lines[0].startswith("flask dbfix check: app 'tests.apps.config_engine_app'")
    assert lines[-1].startswith("Verdict: FAIL")
    assert done.returncode == 1


def test_import_path_names_a_module_global_or_an_attribute_of_one() -> None:
    module = types.ModuleType("dbfix_test_models")
    holder = types.SimpleNamespace(bind=create_engine("sqlite://"))
    engine = create_engine("sqlite://")
    module.__dict__.update(engine=engine, meta=holder)
    sys.modules[module.__name__] = module
    try:
        assert import_path(engine) == "dbfix_test_models.engine"
        assert import_path(holder.bind) == "dbfix_test_models.meta.bind"
        assert import_path(create_engine("sqlite://")) is None
    finally:
        del sys.modules[module.__name__]


# -- the check and assert_fork_safe agree ------------------------------------------------


def _queried_fsa_app(url: str, fix: bool) -> Flask:
    """A Flask-SQLAlchemy app that ran a query while it was created, FlaskDBFix first."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)
    if fix:
        FlaskDBFix(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.commit()
    return app


def _managed(url: str) -> Flask:
    return _queried_fsa_app(url, fix=True)


def _unmanaged(url: str) -> Flask:
    app = Flask(__name__)
    FlaskDBFix(app)  # finds no engine: the app keeps its own
    engine = create_engine(url)
    app.config["ENGINE"] = engine
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    return app


def _nothing(url: str) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    SQLAlchemy(app)
    FlaskDBFix(app)
    return app


def _held(url: str) -> Flask:
    app = Flask(__name__)
    engine = register(create_engine(url), name="held")
    conn: Connection = engine.connect()
    conn.execute(text("SELECT 1"))
    app.config["HELD"] = conn  # still checked out when the process forks
    return app


def _late_init(url: str) -> Flask:
    app = _queried_fsa_app(url, fix=False)
    FlaskDBFix(app)  # after the connection was made: found and managed all the same
    return app


def _no_fix(url: str) -> Flask:
    return _queried_fsa_app(url, fix=False)


APPS: dict[str, Callable[[str], Flask]] = {
    "managed": _managed,
    "unmanaged": _unmanaged,
    "nothing": _nothing,
    "held": _held,
    "late init": _late_init,
    "no fix": _no_fix,
}


@pytest.fixture
def built(request: pytest.FixtureRequest, fresh_db: Callable[[], str]) -> Iterator[Flask]:
    app = APPS[request.param](fresh_db())
    with app.app_context():
        yield app
    held = app.config.get("HELD")
    if held is not None:
        held.close()


@pytest.mark.parametrize("strict", [False, True], ids=["default", "strict"])
@pytest.mark.parametrize("built", list(APPS), indirect=True)
def test_the_check_and_assert_fork_safe_agree(built: Flask, strict: bool, tmp_path: Path) -> None:
    """Same process, same objects: the check fails exactly when assert_fork_safe does."""
    report = build_report(built, default_ini=str(tmp_path / "none.ini"), scan_process=True)
    check_fails = exit_code(report, strict) != 0
    try:
        assert_fork_safe(built, strict=strict)
    except AssertionError as exc:
        helper_fails, said = True, str(exc)
    else:
        helper_fails, said = False, ""
    assert check_fails == helper_fails, (report.findings, said)


# -- under real uWSGI: the warning reaches the operator ----------------------------------


def log_with(server: UwsgiServer, text: str, timeout: float = 15) -> str:
    """The log once it has ``text`` (or after ``timeout`` s): the first worker looks for
    uncovered engines while the others already serve."""
    deadline = time.monotonic() + timeout
    while text not in (log := server.log()) and time.monotonic() < deadline:
        time.sleep(0.1)
    return log


@pytest.fixture
def start(pg: PostgresServer, tmp_path: Path) -> Iterator[Callable[..., UwsgiServer]]:
    started: list[UwsgiServer] = []

    def run(way: str, *, logging_ini: bool) -> UwsgiServer:
        env = {"DATABASE_URL": pg.url(), "DBFIX_WAY": way}
        if logging_ini:
            env["LOGGING_INI"] = str(LOGGING_INI)
        log_dir = tmp_path / f"uwsgi-{len(started)}"
        log_dir.mkdir()
        args = app_args("tests.apps.config_engine_app:app", processes=4, root=ROOT)
        server = start_uwsgi(args, env=env, cwd=ROOT, processes=4, log_dir=log_dir)
        started.append(server)
        return server

    yield run
    for server in started:
        server.stop(graceful=False)


def test_flask_dbfix_that_covers_nothing_says_so_once_through_the_apps_logging(
    start: Callable[..., UwsgiServer], pg: PostgresServer
) -> None:
    """FlaskDBFix(app) on the app finds no engine; the first worker says so, naming the
    engine and the way to cover it, in the app's log format although fileConfig disabled
    every logger that existed when it ran."""
    server = start("extension", logging_ini=True)
    run_load(server.base_url, "/ping", total=40, concurrency=8, deadline=30)
    log = log_with(server, UNCOVERED)
    assert log.count(UNCOVERED) == 1, log
    assert "APPLOG WARNING flask_uwsgi_dbfix: " in log
    assert f"engine '{ENGINE_PATH}'" in log
    assert f"register({ENGINE_PATH})" in log
    assert pg.password not in log


@pytest.mark.parametrize("logging_ini", [False, True], ids=["warnings", "fileConfig"])
def test_registered_engine_is_fixed_and_the_warning_survives_the_apps_filters(
    start: Callable[..., UwsgiServer], pg: PostgresServer, logging_ini: bool
) -> None:
    """The app ignores every UserWarning (and, with fileConfig, disabled the package's
    logger): the start-up warning is still printed once, and no request fails."""
    server = start("register", logging_ini=logging_ini)
    result = run_load(server.base_url, "/query", total=300, concurrency=8, deadline=90)
    assert result.failed == 0, result.failures
    master = set(backends_of(pg, server.process.pid))
    by_worker: dict[int, set[int]] = {}
    for body in result.ok:
        by_worker.setdefault(body["pid"], set()).add(body["backend"])
    for backends in by_worker.values():
        assert master.isdisjoint(backends)
    log = log_with(server, WARNING_NAME)
    assert log.count(WARNING_NAME) == 1, log
    assert f"config_engine_app.py:{settings_line()} in create_app" in log
    assert ("APPLOG WARNING" in log) is logging_ini
    assert UNCOVERED not in log


PARENT = """
import os, sys, warnings
from flask import Flask
from sqlalchemy import create_engine, text
from flask_uwsgi_dbfix import FlaskDBFix

app = Flask(__name__)
FlaskDBFix(app)  # finds no engine: the app keeps its own
engine = create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    conn.execute(text("SELECT 1"))
for _ in range(2):  # one warning for both forks
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_a_parent_whose_flask_dbfix_covers_nothing_warns_at_its_first_fork(
    fresh_db: Callable[[], str], pg: PostgresServer
) -> None:
    """gunicorn --preload, Celery, multiprocessing: the parent's before-fork hook says it
    once, at its first fork, naming the engine the app keeps itself (in a fresh process:
    "manages no engine" is about the whole process)."""
    done = subprocess.run(
        [sys.executable, "-c", PARENT],
        env={**os.environ, "DATABASE_URL": fresh_db(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr.count(UNCOVERED) == 1, done.stderr
    assert "PreForkConnectionWarning" in done.stderr
    assert "register(engine)" in done.stderr  # a local of __main__ has no import path
    assert pg.password not in done.stderr
