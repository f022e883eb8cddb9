"""The process-wide mode: an app that never mentions flask-uwsgi-dbfix is made fork-safe by
one line of deployment (``import = flask_uwsgi_dbfix.auto``, ``dbfix-run``), against the
real PostgreSQL with SSL, real uWSGI and gunicorn, and fresh interpreters that fork."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from harness.gunicorn import start_gunicorn
from harness.load import run_load
from harness.postgres import PostgresServer
from harness.uwsgi import app_args, run_uwsgi_to_exit, start_uwsgi
from tests.pgstat import backends_of

from .conftest import StartUwsgi, UwsgiFleet
from .test_uwsgi_fork import assert_isolated, first_queries, marked_line

ROOT = Path(__file__).resolve().parents[1]
PROBE = ROOT / "tests" / "apps" / "process_wide_probe.py"
BIN = Path(sys.executable).parent
SWITCH = ("--import", "flask_uwsgi_dbfix.auto")
WARNING_NAME = "PreForkConnectionWarning"
ENGINES = ["default", "second", "plain"]


def probe_line(mark: str) -> int:
    for number, line in enumerate(PROBE.read_text().splitlines(), start=1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(f"no MARK {mark!r} in {PROBE}")


def run_probe(
    pg: PostgresServer, url: str, *, switch: str, fork: str, off: bool = False
) -> tuple[dict[str, Any], str]:
    """Run the probe app in a fresh interpreter; (its JSON, its stderr)."""
    env = {
        **os.environ,
        "DATABASE_URL": url,
        "PROBE_IMPORT": "1" if switch == "import" else "0",
        "PROBE_FORK": fork,
    }
    env.pop("FLASK_UWSGI_DBFIX", None)
    if off:
        env["FLASK_UWSGI_DBFIX"] = "off"
    command = [sys.executable, str(PROBE)]
    if switch == "dbfix-run":
        command = [str(BIN / "dbfix-run"), *command]
    done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


# -- every kind of engine, in a process that forks -----------------------------------------


@pytest.mark.parametrize("fork", ["os", "raw"])
@pytest.mark.parametrize("switch", ["import", "dbfix-run"])
def test_every_engine_of_an_app_that_never_asked_is_fork_safe(
    pg: PostgresServer, fresh_db: Any, switch: str, fork: str
) -> None:
    """Plain ``create_engine``, ``engine_from_config``, an ``AsyncEngine``'s sync pool and a
    Flask-SQLAlchemy bind: the child gets backends of its own, the parent's held Connection
    and Session keep theirs (their sockets untouched), the Session held across the fork
    fails once in the child and then recovers; with Python's fork hooks the parent closes
    its idle connections before forking and warns once, naming the app's lines."""
    url = fresh_db()
    out, stderr = run_probe(pg, url, switch=switch, fork=fork)
    child = out["child"]
    assert "error" not in child, child
    kinds = set(out["before"])
    assert {source for _, source in out["managed"]} == {"process-wide"}
    assert len(out["managed"]) == len(kinds) + 1  # the Flask-SQLAlchemy default bind too
    # Named by the app's line that made each (Flask-SQLAlchemy's: where it was first used).
    assert all(name.startswith("process_wide_probe.py:") for name, _ in out["managed"])
    parents = set(out["before"].values()) | {out["held"], out["session"]}
    for kind in kinds:
        assert child["backends"][kind] not in parents, (kind, out)
    if fork == "os":
        assert child["session_first"] == "HeldAcrossForkError", child
        assert child["session_after_rollback"] not in parents
    # The parent's checked-out connections were never touched by the child.
    assert out["after"] == {"held": out["held"], "session": out["session"]}
    alive = set(out["alive"])
    if fork == "os":
        # Closed by the parent before the fork (workers inherit nothing idle), except the
        # one the held Connection uses (the plain engine's, checked out again) and the
        # AsyncEngine's (it closes only in its event loop; the child dropped its copy).
        kept = {out["held"]} | ({out["before"]["async"]} if "async" in kinds else set())
        assert alive == kept, out
        assert stderr.count(WARNING_NAME) == 1, stderr
        for mark, function in [("backend connects", "backend"), ("a Session held", "<module>")]:
            where = f"process_wide_probe.py:{probe_line(mark)} in {function}"
            assert where in stderr, stderr
        assert pg.password not in stderr
    else:
        # No hook ran: the parent still has them all, and the child closed none of them.
        assert alive == set(out["before"].values()), out
        assert WARNING_NAME not in stderr, stderr


@pytest.mark.parametrize("how", ["not switched on", "FLASK_UWSGI_DBFIX=off"])
def test_control_without_the_mode_the_child_uses_the_parents_backends(
    pg: PostgresServer, fresh_db: Any, how: str
) -> None:
    """The same probe without the mode (or with it switched off): the child runs on the
    parent's backends, which is the bug the tests above would catch."""
    switch = "none" if how == "not switched on" else "dbfix-run"
    out, stderr = run_probe(pg, fresh_db(), switch=switch, fork="os", off=how != "not switched on")
    assert out["managed"] == []
    child = out["child"]
    # The pool's idle connection, reused by the child: the parent's backend, or the shared
    # TLS stream already broken under it.
    shared = child.get("backends", {}).get("from_config") == out["before"]["from_config"]
    assert shared or "error" in child, out
    assert WARNING_NAME not in stderr


# -- switching it on and off -----------------------------------------------------------------


def python(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "FLASK_UWSGI_DBFIX"} | env
    return subprocess.run(
        [sys.executable, "-c", code], env=full, cwd=ROOT, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip


REPORT = """
import json, sys
from flask_uwsgi_dbfix import process_wide
from sqlalchemy.engine.interfaces import Dialect
import sqlalchemy as sa
e = sa.create_engine("postgresql+psycopg2://u:p@127.0.0.1:1/db")
from flask_uwsgi_dbfix import engines
print(json.dumps({
    "on": process_wide.is_on(),
    "managed": [[m.name, m.source] for m in engines.all_engines()],
    "wrapped": Dialect.engine_created.__func__.__qualname__,
    "listeners": sum(type(getattr(fn, "__self__", None)).__name__ == "ManagedEngine"
                     for fn in e.pool.dispatch.connect),
}))
"""


def report(code: str, **env: str) -> dict[str, Any]:
    done = python(code + REPORT, **env)
    assert done.returncode == 0, done.stderr
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_switched_on_twice_it_is_on_once() -> None:
    out = report(
        "import flask_uwsgi_dbfix.auto\nimport flask_uwsgi_dbfix.process_wide as p\n"
        "assert p.switch_on() and p.switch_on()\n"
    )
    assert out["on"] is True
    assert [source for _, source in out["managed"]] == ["process-wide"]
    assert out["listeners"] == 1  # one connect listener: ours, once
    assert "watch_engine_creation" in out["wrapped"]


def test_an_engine_made_before_the_switch_is_found_too() -> None:
    out = report(
        "import sqlalchemy as sa\nearly = sa.create_engine('postgresql://u:p@127.0.0.1:1/e')\n"
        "import flask_uwsgi_dbfix.auto\n"
    )
    assert len(out["managed"]) == 2


@pytest.mark.parametrize("value", ["off", "0", "false", " OFF "])
def test_off_for_one_process(value: str) -> None:
    out = report("import flask_uwsgi_dbfix.auto\n", FLASK_UWSGI_DBFIX=value)
    assert out["on"] is False
    assert out["managed"] == []
    assert out["wrapped"] != "watch_engine_creation.<locals>.engine_created"


def test_without_the_switch_nothing_is_touched() -> None:
    out = report("import flask_uwsgi_dbfix, flask_uwsgi_dbfix.process_wide\n")
    assert out == {"on": False, "managed": [], "wrapped": "Dialect.engine_created",
                   "listeners": 0}  # fmt: skip


@pytest.mark.parametrize("value", ["of", "enable", "2"])
def test_a_misspelt_value_stops_the_process_with_the_accepted_values(value: str) -> None:
    done = python("import flask_uwsgi_dbfix.auto\nprint('went on')", FLASK_UWSGI_DBFIX=value)
    assert done.returncode == 2
    assert "went on" not in done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert f"FLASK_UWSGI_DBFIX={value!r}" in lines[0]
    assert "on, off" in lines[0]


def test_dbfix_run_refuses_a_misspelt_value_and_a_missing_command() -> None:
    env = {k: v for k, v in os.environ.items() if k != "FLASK_UWSGI_DBFIX"}
    bad = subprocess.run(
        [str(BIN / "dbfix-run"), sys.executable, "-c", "print('ran')"],
        env=env | {"FLASK_UWSGI_DBFIX": "yess"}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert (bad.returncode, bad.stdout) == (2, "")
    assert "on, off" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    missing = subprocess.run(
        [str(BIN / "dbfix-run"), "no-such-command-here"],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.strip() == "dbfix-run: command not found: no-such-command-here"
    usage = subprocess.run([str(BIN / "dbfix-run")], capture_output=True, text=True, timeout=30)
    assert usage.returncode == 2 and "usage: dbfix-run" in usage.stderr


def test_dbfix_run_keeps_the_programs_own_sitecustomize(tmp_path: Path) -> None:
    (tmp_path / "sitecustomize.py").write_text("import os\nos.environ['THEIRS'] = 'ran'\n")
    env = {k: v for k, v in os.environ.items() if k != "FLASK_UWSGI_DBFIX"}
    code = (
        "import os, sys; from flask_uwsgi_dbfix import process_wide as p; "
        "print(p.is_on(), os.environ.get('THEIRS'), 'sqlalchemy' in sys.modules)"
    )
    done = subprocess.run(
        [str(BIN / "dbfix-run"), sys.executable, "-c", code],
        env=env | {"PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "ran", "True"]


def test_in_a_process_without_sqlalchemy_it_does_nothing() -> None:
    done = python(
        "import sys; sys.modules['sqlalchemy'] = None\n"
        "import flask_uwsgi_dbfix.auto\nfrom flask_uwsgi_dbfix import process_wide as p\n"
        "print(p.is_on())"
    )
    assert (done.returncode, done.stdout.strip(), done.stderr) == (0, "False", "")


def test_where_there_is_no_fork_it_does_nothing() -> None:
    done = python(
        "import os; del os.fork\nimport flask_uwsgi_dbfix.auto\n"
        "import sys; from flask_uwsgi_dbfix import process_wide as p\n"
        "print(p.is_on(), 'sqlalchemy' in sys.modules)"
    )
    assert (done.returncode, done.stdout.split(), done.stderr) == (0, ["False", "False"], "")


def test_with_flaskdbfix_too_each_engine_is_managed_once_and_named_by_the_app() -> None:
    code = """
import warnings
import flask_uwsgi_dbfix.auto
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from flask_uwsgi_dbfix import FlaskDBFix
from tests.fsa_compat import fsa_engines
app = Flask("t")
app.config["SQLALCHEMY_DATABASE_URI"] = "postgresql+psycopg2://u:p@127.0.0.1:1/a"
app.config["SQLALCHEMY_BINDS"] = {"second": "postgresql+psycopg2://u:p@127.0.0.1:1/b"}
db = SQLAlchemy(app)
fsa_engines(db, app)
FlaskDBFix(app)
"""
    out = report(code)
    assert sorted(map(tuple, out["managed"])) == [
        ("default", "flask-sqlalchemy"),
        ("process-wide", "process-wide"),  # REPORT's own engine (made in no file)
        ("second", "flask-sqlalchemy"),
    ]


# -- real servers ------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["uwsgi import", "dbfix-run"])
def test_uwsgi_serves_an_app_that_never_asked_with_every_engine_fixed(
    pg: PostgresServer, fresh_db: Any, tmp_path: Path, via: str
) -> None:
    """bug_app without FlaskDBFix, with two Flask-SQLAlchemy binds and a plain engine, all
    opened at import: 4 workers, no lazy-apps. One deployment line: no failed request, each
    worker on backends of its own, one warning naming the app's line; with
    py-call-uwsgi-fork-hooks the master keeps no backend."""
    env = {
        "DATABASE_URL": fresh_db(),
        "SECOND_DATABASE_URL": fresh_db(),
        "PLAIN_DATABASE_URL": fresh_db(),
        "DBFIX_FIX": "0",
    }
    args = [*app_args("tests.apps.bug_app:app", processes=4, root=ROOT)]
    args += ["--py-call-uwsgi-fork-hooks", "--binary-path", str(BIN / "uwsgi")]
    program = [str(BIN / "dbfix-run"), str(BIN / "uwsgi")] if via == "dbfix-run" else None
    if via == "uwsgi import":
        args += SWITCH
    fleet = UwsgiFleet(tmp_path)
    try:
        log_dir = tmp_path / "log"
        log_dir.mkdir()
        server = start_uwsgi(args, env=env, cwd=ROOT, processes=4, log_dir=log_dir, program=program)
        fleet.started.append(server)
        result = run_load(server.base_url, "/query", total=400, concurrency=8, deadline=120)
        assert_isolated(result, ENGINES)
        assert backends_of(pg, server.process.pid) == []
        # The master closed its idle connections itself: nothing inherited, no warning.
        assert WARNING_NAME not in server.log()
    finally:
        fleet.stop_all(graceful=False)


@pytest.mark.parametrize("via", ["uwsgi import", "dbfix-run"])
def test_uwsgi_without_fork_hooks_warns_once_naming_the_apps_line(
    pg: PostgresServer, tmp_path: Path, via: str
) -> None:
    """The mode is on in the master before the app is imported: the one warning of the
    start-up names the app's own line that opened the connection the workers inherited."""
    args = [*app_args("tests.apps.bug_app:app", processes=4, root=ROOT)]
    program = [str(BIN / "dbfix-run"), str(BIN / "uwsgi")] if via == "dbfix-run" else None
    if via == "uwsgi import":
        args += SWITCH
    env = {"DATABASE_URL": pg.url(), "DBFIX_FIX": "0"}
    server = start_uwsgi(args, env=env, cwd=ROOT, processes=4, log_dir=tmp_path, program=program)
    try:
        result = run_load(server.base_url, "/query", total=200, concurrency=8, deadline=90)
    finally:
        server.stop(graceful=False)
    assert_isolated(result, ["default"])
    log = server.log()
    assert log.count(WARNING_NAME) == 1, log
    assert f"bug_app.py:{marked_line('default-engine pre-fork connection')}" in log, log
    assert pg.password not in log


@pytest.mark.parametrize("where", ["environment", "uwsgi env option"])
def test_uwsgi_switched_off_shows_the_bug_again(serve: StartUwsgi, where: str) -> None:
    """The control: the same line with FLASK_UWSGI_DBFIX=off, and workers start on the
    master's connection. uWSGI's own ``env`` option (an ini's ``env =`` line) counts too:
    pyuwsgi applies it after Python started, where only the C environment has it."""
    off = {"FLASK_UWSGI_DBFIX": "off"}
    if where == "environment":
        server = serve(fix=False, options=SWITCH, env=off)
    else:
        server = serve(fix=False, options=(*SWITCH, "--env", "FLASK_UWSGI_DBFIX=off"))
    firsts = first_queries(server, workers=4)
    assert len(firsts) >= 2, "load did not reach two workers"
    for body in firsts.values():
        first = body["first"]["default"]
        assert first.get("backend") == body["import"]["default"] or "error" in first, first


@pytest.mark.parametrize("where", ["environment", "uwsgi env option"])
def test_uwsgi_with_a_misspelt_value_stops_before_forking(
    pg: PostgresServer, tmp_path: Path, where: str
) -> None:
    args = [*app_args("tests.apps.bug_app:app", processes=4, root=ROOT), *SWITCH]
    env = {"DATABASE_URL": pg.url(), "DBFIX_FIX": "0"}
    if where == "environment":
        env["FLASK_UWSGI_DBFIX"] = "onn"
    else:
        args = ["--env", "FLASK_UWSGI_DBFIX=onn", *args]
    status, log = run_uwsgi_to_exit(args, log_path=tmp_path / "uwsgi.log", env=env, cwd=ROOT)
    assert status != 0
    assert "FLASK_UWSGI_DBFIX='onn'" in log and "on, off" in log
    assert not re.search(r"spawned uWSGI worker", log), log


@pytest.mark.parametrize("via", ["dbfix-run", "gunicorn.conf.py"])
def test_gunicorn_preload_under_the_mode(pg: PostgresServer, tmp_path: Path, via: str) -> None:
    """gunicorn --preload, the app without FlaskDBFix, the mode on by ``dbfix-run`` or by
    ``import flask_uwsgi_dbfix.auto`` in gunicorn's config file (the arbiter runs it before
    it loads the app): the arbiter closes what it opened before forking, every worker has
    its own backend, no failed request."""
    if not (BIN / "gunicorn").is_file():
        pytest.skip("no gunicorn in this environment (a matrix leg without the test extra)")
    env = {"DATABASE_URL": pg.url(), "DBFIX_FIX": "0"}
    args, program = ["--preload"], [str(BIN / "dbfix-run"), str(BIN / "gunicorn")]
    if via == "gunicorn.conf.py":
        conf = tmp_path / "gunicorn.conf.py"
        conf.write_text("import flask_uwsgi_dbfix.auto  # noqa: F401\n")
        args, program = ["--preload", "--config", str(conf)], [str(BIN / "gunicorn")]
    server = start_gunicorn(
        "tests.servers.apps.web:app",
        args,
        workers=4,
        log_dir=tmp_path,
        env=env,
        cwd=ROOT,
        program=program,
    )
    try:
        result = run_load(server.base_url, "/query", total=300, concurrency=8, deadline=90)
        assert result.failed == 0, result.failures
        by_pid: dict[int, set[int]] = {}
        for body in result.ok:
            by_pid.setdefault(body["pid"], set()).add(body["backend"])
        owners: dict[int, int] = {}
        for pid, found in by_pid.items():
            for b in found:
                assert owners.setdefault(b, pid) == pid, f"backend {b} shared"
        assert len(by_pid) == 4
        assert {body["import"] for body in result.ok}.isdisjoint(owners)
        assert backends_of(pg, server.server.pid) == []  # the arbiter closed its own
    finally:
        server.stop(graceful=False)


def test_uwsgi_serves_a_plain_wsgi_app_with_the_mode(pg: PostgresServer, tmp_path: Path) -> None:
    """No Flask at all: an ``engine_from_config`` engine that reads a settings row at import.
    Without the mode the workers share the master's socket; with it, none fails and none
    shares a backend."""
    fleet = UwsgiFleet(tmp_path)
    env = {"DATABASE_URL": pg.url()}
    base = [*app_args("tests.apps.plain_wsgi:application", processes=4, root=ROOT)]
    try:
        bare = fleet.start([*base], env, 4)
        shared = run_load(bare.base_url, "/query", total=200, concurrency=8, deadline=90)
        with_mode = fleet.start([*base, *SWITCH, "--py-call-uwsgi-fork-hooks"], env, 4)
        fixed = run_load(with_mode.base_url, "/query", total=400, concurrency=8, deadline=90)
        master_backends = backends_of(pg, with_mode.process.pid)
    finally:
        fleet.stop_all(graceful=False)
    owners: dict[int, set[int]] = {}
    for body in shared.ok:
        owners.setdefault(body["backend"], set()).add(body["pid"])
    bug = shared.failed > 0 or any(len(pids) > 1 for pids in owners.values())
    assert bug, "without the mode the workers should share the master's connection"
    assert fixed.failed == 0, fixed.failures
    owners = {}
    for body in fixed.ok:
        owners.setdefault(body["backend"], set()).add(body["pid"])
    assert all(len(pids) == 1 for pids in owners.values()), owners
    assert master_backends == []


# -- the check knows the mode -----------------------------------------------------------------

FLASK = BIN / "flask"
GOOD_INI = "[uwsgi]\nmaster = true\nprocesses = 4\n"


def check(*command: str, **env: str) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if k != "FLASK_UWSGI_DBFIX"}
    return subprocess.run(
        list(command), cwd=ROOT, env=full | {"PYTHONPATH": str(ROOT)} | env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("extra", "code", "finding"),
    [
        ("", 1, "ERROR    fix-disabled"),
        ("import = flask_uwsgi_dbfix.auto\n", 0, "NOTE     process-wide"),
        ("pyimport = flask_uwsgi_dbfix.auto\nenv = FLASK_UWSGI_DBFIX=off\n", 1, "ERROR    fix-"),
        ("import = flask_uwsgi_dbfix.auto\nenv = FLASK_UWSGI_DBFIX=of\n", 1, "process-wide-switch"),
    ],
    ids=["no-switch", "import", "switched-off", "misspelt"],
)
def test_flask_dbfix_check_sees_the_mode_in_the_ini(
    pg: PostgresServer, tmp_path: Path, extra: str, code: int, finding: str
) -> None:
    """An app without FlaskDBFix that queries at import: the ini's import line is the fix
    (the check switches the mode on before loading the app, as uWSGI's master does)."""
    ini_path = tmp_path / "uwsgi.ini"
    ini_path.write_text(GOOD_INI + "module = tests.cli_apps.import_query_app:app\n" + extra)
    done = check(
        str(FLASK), "--app", "tests.cli_apps.import_query_app", "dbfix", "check",
        "--ini", str(ini_path), DATABASE_URL=pg.url(), DBFIX_INIT="0",
    )  # fmt: skip
    assert done.returncode == code, done.stdout + done.stderr
    assert finding in done.stdout
    assert pg.password not in done.stdout + done.stderr
    if "=off" in extra:  # it says why, rather than ask for the line the ini already has
        text = " ".join(done.stdout.split())
        assert "the process-wide mode is switched off" in text, done.stdout
        assert "add `import = flask_uwsgi_dbfix.auto`" not in text
    if code == 0:
        data = json.loads(
            check(
                str(FLASK),
                "--app",
                "tests.cli_apps.import_query_app",
                "dbfix",
                "check",
                "--ini",
                str(ini_path),
                "--json",
                DATABASE_URL=pg.url(),
                DBFIX_INIT="0",
            ).stdout  # fmt: skip
        )
        assert data["extension"]["process_wide"].endswith("import = flask_uwsgi_dbfix.auto")
        assert data["extension"]["initialised"] is False
        assert [e["source"] for e in data["engines"]] == ["process-wide"]
        assert data["engines"][0]["managed"] is True
        line = marked_import_line()
        assert data["prefork_connections"][0]["origin"]["line"] == line


def marked_import_line() -> int:
    app = ROOT / "tests" / "cli_apps" / "import_query_app.py"
    for number, text in enumerate(app.read_text().splitlines(), start=1):
        if "# MARK: import" in text:
            return number
    raise AssertionError("no MARK: import")


def test_the_check_under_dbfix_run_sees_the_mode_in_its_own_process(pg: PostgresServer) -> None:
    done = check(
        str(BIN / "dbfix-run"), str(FLASK), "--app", "tests.cli_apps.import_query_app", "dbfix",
        "check", DATABASE_URL=pg.url(), DBFIX_INIT="0",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert "process-wide mode on: switched on in this process" in done.stdout


PLAIN = ROOT / "tests" / "apps" / "plain_wsgi.py"


def plain_line(mark: str) -> int:
    for number, text in enumerate(PLAIN.read_text().splitlines(), start=1):
        if f"# MARK: {mark}" in text:
            return number
    raise AssertionError(mark)


def test_python_m_check_on_an_app_that_is_not_a_flask_app(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """``python -m flask_uwsgi_dbfix check``: the app the ini serves, loaded as uWSGI would;
    an engine nothing manages holding a connection is an error naming its line; the ini's
    import line makes it safe."""
    served = GOOD_INI + "module = tests.apps.plain_wsgi:application\n"
    (tmp_path / "bare.ini").write_text(served)
    (tmp_path / "fixed.ini").write_text(served + "import = flask_uwsgi_dbfix.auto\n")
    python_m = [sys.executable, "-m", "flask_uwsgi_dbfix", "check"]
    bare = check(*python_m, "--ini", str(tmp_path / "bare.ini"), DATABASE_URL=pg.url())
    assert bare.returncode == 1, bare.stdout + bare.stderr
    assert "ERROR    prefork-connection" in bare.stdout
    assert f"plain_wsgi.py:{plain_line('startup')} in <module>" in bare.stdout
    assert "import = flask_uwsgi_dbfix.auto" in " ".join(bare.stdout.split())
    fixed = check(*python_m, "--ini", str(tmp_path / "fixed.ini"), "--json",
                  DATABASE_URL=pg.url())  # fmt: skip
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    data = json.loads(fixed.stdout)
    assert [e["name"] for e in data["engines"]] == [
        f"tests/apps/plain_wsgi.py:{plain_line('made')}"
    ]
    assert data["verdict"]["status"] == "pass"
    for output in (bare.stdout, bare.stderr, fixed.stdout):
        assert pg.password not in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--app", "tests.apps.no_such_module"], "could not load 'tests.apps.no_such_module'"),
        (["--app", "tests.apps.plain_wsgi:nothere"], "has no 'nothere'"),
        (["--app", "/no/such/file.py"], "no such file: /no/such/file.py"),
        (["--ini", "/no/such.ini", "--app", "x:y"], "/no/such.ini"),
    ],
)
def test_python_m_check_bad_input_is_one_line_and_exit_2(
    pg: PostgresServer, args: list[str], message: str
) -> None:
    done = check(sys.executable, "-m", "flask_uwsgi_dbfix", "check", *args, DATABASE_URL=pg.url())
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.count("\n") == 1 and message in done.stderr, done.stderr


PRINTING_APP = """
import os
import sys

import settings  # found through the ini's pythonpath
import sqlalchemy as sa

print("banner: the app prints while it loads")
sys.stdout = sys.stderr  # a common wsgi-file habit
engine = sa.create_engine(os.environ["DATABASE_URL"])
with engine.connect() as conn:
    conn.execute(sa.text(settings.QUERY)).scalar()


def application(environ, start_response):
    start_response("200 OK", [])
    return [b"ok"]
"""


def test_python_m_check_follows_the_inis_chdir_and_pythonpath_and_keeps_stdout_for_the_report(
    pg: PostgresServer, tmp_path: Path
) -> None:
    """An app laid out as deployments do (the ini elsewhere, ``chdir`` to the code, a
    settings module on ``pythonpath``) that prints while it loads and replaces sys.stdout:
    the check loads it as uWSGI would, and ``--json`` on stdout still parses."""
    (tmp_path / "code").mkdir()
    (tmp_path / "conf").mkdir()
    (tmp_path / "deploy").mkdir()
    (tmp_path / "code" / "printing_wsgi.py").write_text(PRINTING_APP)
    (tmp_path / "conf" / "settings.py").write_text("QUERY = 'SELECT 1'\n")
    ini_path = tmp_path / "deploy" / "uwsgi.ini"
    ini_path.write_text(
        GOOD_INI + "chdir = ../code\npythonpath = ../conf\nmodule = printing_wsgi:application\n"
    )
    done = check(
        sys.executable, "-m", "flask_uwsgi_dbfix", "check", "--ini", str(ini_path), "--json",
        DATABASE_URL=pg.url(),
    )  # fmt: skip
    assert done.returncode == 1, done.stdout + done.stderr
    data = json.loads(done.stdout)
    assert "banner: the app prints while it loads" in done.stderr
    assert data["prefork_connections"][0]["origin"]["file"].endswith("printing_wsgi.py")
    assert data["app"]["import_path"] == "printing_wsgi:application"


def test_flask_dbfix_check_json_parses_when_the_app_prints_while_it_loads(
    pg: PostgresServer,
) -> None:
    done = check(
        str(FLASK), "--app", "tests.cli_apps.import_query_app", "dbfix", "check", "--json",
        DATABASE_URL=pg.url(), PRINT_AT_IMPORT="1",
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["verdict"]["status"] == "pass"
    assert "import_query_app says hello" in done.stderr
