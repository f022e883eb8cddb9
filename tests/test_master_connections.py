"""Issue 7 under real uWSGI and the real ``flask dbfix check``, on PostgreSQL with SSL:
an app that does its start-up work before FlaskDBFix and uses an engine before
register(), a scoped_session left open across the fork, a library that connects on the
app's behalf, and the master closing its idle connections before each fork."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_uwsgi_dbfix.stamps import UNKNOWN_ORIGIN
from harness.load import get_json, run_load
from harness.postgres import PostgresServer
from harness.uwsgi import UwsgiServer, app_args
from tests.conftest import UwsgiFleet
from tests.pgstat import backends_of
from tests.servers.helpers import wait_for

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "tests" / "apps" / "master_app.py"
WARNING_NAME = "PreForkConnectionWarning"
HELD_MESSAGE = "this connection was in use when the process forked (opened at "
FAKELIB = """\
def create_tables(db):
    db.create_all()  # the library's own line
"""
FAKELIB_LINE = 2

Start = Callable[..., UwsgiServer]


def mark(name: str) -> int:
    for number, line in enumerate(APP.read_text().splitlines(), start=1):
        if f"# MARK: {name}" in line:
            return number
    raise AssertionError(f"no MARK {name!r} in {APP}")


@pytest.fixture
def fakelib_dir(tmp_path: Path) -> Path:
    """A stand-in for an installed library (Flask-AppBuilder creating its tables): a module
    in a directory named site-packages, which is how installed code is told apart."""
    path = tmp_path / "venv" / "lib" / "site-packages"
    path.mkdir(parents=True)
    (path / "fakelib.py").write_text(FAKELIB)
    return path


@pytest.fixture
def app_env(fresh_db: Callable[[], str]) -> dict[str, str]:
    return {"DATABASE_URL": fresh_db(), "PLAIN_DATABASE_URL": fresh_db()}


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Start]:
    fleet = UwsgiFleet(tmp_path)

    def run(env: dict[str, str], *options: str, processes: int = 3) -> UwsgiServer:
        args = app_args("tests.apps.master_app:app", processes=processes, root=ROOT)
        return fleet.start([*args, *options], env, processes)

    yield run
    fleet.stop_all(graceful=True)


def assert_workers_use_own_backends(server: UwsgiServer, master: list[int]) -> None:
    result = run_load(server.base_url, "/query", total=120, concurrency=8, deadline=90)
    assert result.failed == 0, result.failures
    used = {b["now"][name]["backend"] for b in result.ok for name in b["now"]}
    assert used.isdisjoint(master), "a worker used one of the master's connections"
    assert all(b["now"][name]["ssl"] for b in result.ok for name in b["now"])


def ready(server: UwsgiServer, processes: int) -> bool:
    try:
        status, _ = get_json(server.base_url, "/ping", timeout=2)
    except OSError:
        return False
    return status == 200 and len(server.worker_pids()) == processes


def test_fork_hooks_the_master_keeps_no_backend_after_startup_respawn_and_sighup(
    start: Start, app_env: dict[str, str], pg: PostgresServer
) -> None:
    env = {**app_env, "BASIC_LOGGING": "1"}
    # pyuwsgi reloads by exec'ing the interpreter it detected (the base one, without this
    # virtualenv's packages); point it at this environment's python instead.
    server = start(env, "--py-call-uwsgi-fork-hooks", "--binary-path", sys.executable)
    master = server.process.pid
    counts = {"startup": backends_of(pg, master)}
    assert_workers_use_own_backends(server, [])

    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in server.worker_pids() and ready(server, 3), "a respawn")
    counts["respawn"] = backends_of(pg, master)

    spawned = server.log().count("spawned uWSGI worker")
    os.kill(master, signal.SIGHUP)  # graceful reload: the master loads the app again
    wait_for(
        lambda: server.log().count("spawned uWSGI worker") >= spawned + 3 and ready(server, 3),
        "the reload",
    )
    counts["sighup"] = backends_of(pg, master)
    assert_workers_use_own_backends(server, [])
    print(f"\nmaster backends with py-call-uwsgi-fork-hooks: {counts}")
    assert counts == {"startup": [], "respawn": [], "sighup": []}
    log = server.log()
    # Two loads of the app (start, SIGHUP): the master said each time what it closed.
    assert log.count("closed 2 idle database connection(s) before forking") == 2, log
    # Opened before FlaskDBFix/register(): found and closed, and said to be of unknown origin.
    assert log.count(f"opened at {UNKNOWN_ORIGIN}") == 4, log  # 2 engines x 2 loads
    assert WARNING_NAME not in log  # nothing was inherited


def test_control_switch_off_the_master_keeps_its_backends_and_workers_warn(
    start: Start, app_env: dict[str, str], pg: PostgresServer
) -> None:
    server = start({**app_env, "DBFIX_CLOSE_BEFORE_FORK": "0"}, "--py-call-uwsgi-fork-hooks")
    master_backends = backends_of(pg, server.process.pid)
    print(f"\nmaster backends with DBFIX_CLOSE_BEFORE_FORK off: {master_backends}")
    assert len(master_backends) == 2  # default bind + the registered engine
    assert_workers_use_own_backends(server, master_backends)
    assert server.log().count(WARNING_NAME) == 1


@pytest.mark.parametrize("fork_hooks", [False, True], ids=["plain", "fork-hooks"])
def test_late_init_register_after_use_and_a_held_session_are_all_warned_about(
    start: Start, app_env: dict[str, str], pg: PostgresServer, fakelib_dir: Path, fork_hooks: bool
) -> None:
    """FlaskDBFix last in the factory, tables created by a "library", a plain engine used
    at import then register()-ed, a scoped_session left open; logging.basicConfig on.
    With py-call-uwsgi-fork-hooks the master closes the 2 idle ones and says so; the held
    one cannot be closed and is still warned about by the workers."""
    env = {
        **app_env,
        "HELD_SESSION": "1",
        "FAKELIB_DIR": str(fakelib_dir),
        "BASIC_LOGGING": "1",
    }
    server = start(env, *(["--py-call-uwsgi-fork-hooks"] if fork_hooks else []))
    master_backends = backends_of(pg, server.process.pid)
    assert len(master_backends) == (1 if fork_hooks else 3)
    assert_workers_use_own_backends(server, master_backends)
    log = server.log()
    assert log.count(WARNING_NAME) == 1, log  # once, although logging is configured
    # Every connection was opened before FlaskDBFix (last line of the factory) and before
    # register(): nothing saw who opened them, and the warning says so and what to do. The
    # tests of `flask dbfix check` show the same app's lines named (it records first).
    assert f"opened at {UNKNOWN_ORIGIN}" in log
    assert str(APP) not in log
    if fork_hooks:
        assert log.count("closed 2 idle database connection(s) before forking") == 1, log
        assert "1 database connection(s) were open" in log
        assert "engine 'plain' (" in log and "1 connection(s), 1 checked out at fork time" in log
    else:
        assert "closed " not in log
        assert "3 database connection(s) were open" in log
        assert "engine 'default' (" in log and "engine 'plain' (" in log
        assert "2 connection(s), 1 checked out at fork time" in log
    assert pg.password not in log
    print(f"\nlate init, fork hooks {fork_hooks}: master backends {master_backends}")

    # The scoped_session held across the fork: once per worker a clear error, then it works.
    by_worker: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for _ in range(6):  # bounded: until every worker served it at least twice
        for body in run_load(server.base_url, "/held", total=30, concurrency=6).ok:
            by_worker[body["pid"]].append(body)
        if len(by_worker) == 3 and all(len(v) >= 2 for v in by_worker.values()):
            break
    assert by_worker
    for pid, bodies in by_worker.items():
        bodies.sort(key=lambda b: b["attempt"])
        first, rest = bodies[0], bodies[1:]
        assert first["attempt"] == 1
        assert HELD_MESSAGE + "an unknown place)" in first["failed"]
        assert rest and all("backend" in b for b in rest), (pid, bodies)
        assert {b["backend"] for b in rest}.isdisjoint(master_backends)
    assert backends_of(pg, server.process.pid) == master_backends  # the master's survive


FLASK = Path(sys.executable).parent / "flask"


def flask_check(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLASK), "--app", "tests.apps.master_app", "dbfix", "check", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_real_check_counts_every_connection_of_a_late_init_app(
    app_env: dict[str, str], fakelib_dir: Path, tmp_path: Path
) -> None:
    env = {**app_env, "FAKELIB_DIR": str(fakelib_dir)}
    ini = tmp_path / "uwsgi.ini"
    ini.write_text("[uwsgi]\nmaster = true\nprocesses = 4\nmodule = tests.apps.master_app:app\n")
    data = json.loads(flask_check(env, "--ini", str(ini), "--json").stdout)
    opened = {e["name"]: e["open_connections"] for e in data["engines"]}
    assert opened == {"default": 1, "plain": 1}
    origins = {c["engine"]: c["origin"] for c in data["prefork_connections"]}
    assert origins["default"]["line"] == mark("library call")
    assert origins["default"]["via"]["file"] == str(fakelib_dir / "fakelib.py")
    assert origins["plain"]["via"] is None
    assert flask_check(env, "--ini", str(ini)).returncode == 0  # warnings only
    strict = flask_check(env, "--ini", str(ini), "--strict")
    assert strict.returncode == 1, strict.stdout + strict.stderr
    shown = f"tests/apps/master_app.py:{mark('library call')} in create_app (via fakelib.py:"
    assert shown in " ".join(strict.stdout.split())  # shortened, not cut inside a path
    assert f"{fakelib_dir}" not in strict.stdout
    assert "py-call-uwsgi-fork-hooks = true" in strict.stdout
    print(f"\ncheck, late init: {opened}, --strict exit {strict.returncode}")

    # With the held session too: 3 connections, an error even without --strict.
    held = flask_check({**env, "HELD_SESSION": "1"}, "--ini", str(ini), "--json")
    data = json.loads(held.stdout)
    assert held.returncode == 1
    assert len(data["prefork_connections"]) == 3
    assert sum(c["checked_out"] for c in data["prefork_connections"]) == 1

    # The master would close the idle ones itself with py-call-uwsgi-fork-hooks.
    ini.write_text(ini.read_text() + "py-call-uwsgi-fork-hooks = true\n")
    hooked = flask_check(env, "--ini", str(ini), "--strict")
    assert hooked.returncode == 0, hooked.stdout
    assert "The master closes it before forking" in " ".join(hooked.stdout.split())
