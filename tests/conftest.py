"""Session-wide real servers: one PostgreSQL with SSL on; uWSGI masters per test."""

from __future__ import annotations

import gc
import itertools
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import pytest

from harness.postgres import PostgresServer, postgres_server
from harness.uwsgi import UwsgiServer, app_args, start_uwsgi

if TYPE_CHECKING:
    from harness.mariadb import MariaDBServer

ROOT = Path(__file__).resolve().parent.parent
_db_names = itertools.count(1)
_PYTEST_PID = os.getpid()


def _interrupt_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM (a CI time-out, ``timeout``, ``kill``) ends pytest like Ctrl-C does, so the
    fixtures' teardown and the harness's atexit stop every server it started; Python's
    default for SIGTERM is to die on the spot and leave them running. A forked child of a
    test just exits."""
    if os.getpid() != _PYTEST_PID:
        os._exit(128 + signum)
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config: pytest.Config) -> None:
    signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    _reloadable_pyuwsgi()


def _reloadable_pyuwsgi() -> None:
    """pyuwsgi in this virtualenv reloads only with binary-path naming its python: set it
    for every uWSGI the tests start (uWSGI reads ``UWSGI_<OPTION>``), as a deployment
    would, so inis written by tests pass the check's ``pyuwsgi-venv-reload`` finding
    (tests/test_cli_exits.py and test_pyuwsgi_reload.py unset it)."""
    script = Path(sys.prefix, "bin", "uwsgi")
    if sys.prefix != sys.base_prefix and script.is_file():
        if b"pyuwsgi" in script.read_bytes()[:4096]:
            os.environ.setdefault("UWSGI_BINARY_PATH", str(Path(sys.prefix, "bin", "python")))


# Modules whose tests start servers or whole test suites themselves, without the pg fixture.
_SLOW_MODULES = frozenset(
    {
        "test_benchmarks.py",
        "test_demo.py",
        "test_dropin_flask_sqlalchemy.py",
        "test_dropin_sqlalchemy.py",
        "test_harness.py",
        "test_import_cost_benchmark.py",
        "test_pyuwsgi_reload.py",
        "test_quality.py",
    }
)


@pytest.fixture(autouse=True)
def a_fresh_parent_warns_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent warns once per process about what its children inherit; every test is
    a fresh parent, whatever ran before it in this pytest process (the suite passes in any
    order). Imports nothing: a test that never loaded the package leaves it unloaded."""
    hooks = sys.modules.get("flask_uwsgi_dbfix.forkhooks")
    if hooks is not None:
        monkeypatch.setattr(hooks._hooks, "parent_warned", False)
        monkeypatch.setattr(hooks._hooks, "uncovered_checked", False)


@pytest.fixture(autouse=True)
def engines_of_earlier_tests_are_gone() -> Iterator[None]:
    """A test's engines end with it. The package keeps only weak references, but an engine
    left in a reference cycle lives until the collector runs, and until then every check in
    this process (``flask dbfix check``, ``assert_fork_safe``) lists it with the engines of
    the test that runs next: in a random order, a test would see another's engine. After a
    test that managed a new engine, collect. Imports nothing."""
    registry = sys.modules.get("flask_uwsgi_dbfix.engines")
    before = set(registry._managed) if registry is not None else set()
    yield
    registry = sys.modules.get("flask_uwsgi_dbfix.engines")
    if registry is not None and set(registry._managed) - before:
        gc.collect()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``fast`` every test that needs no server (no PostgreSQL, no uWSGI, no other
    suite): ``pytest -m fast`` is the seconds-long tier. Derived from the fixtures a test
    uses, so a new test is placed without anyone remembering to mark it."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if not fixtures & {"pg", "mariadb", "small_pg"} and item.path.name not in _SLOW_MODULES:
            item.add_marker(pytest.mark.fast)


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 with ssl=on that refuses TCP without SSL."""
    with postgres_server() as server:
        yield server


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDBServer]:
    """A throwaway MariaDB (Debian's) that accepts the app's user over TLS only. Imported
    here, not at the top: legs that run no MariaDB test need no PyMySQL."""
    from harness.mariadb import mariadb_server

    with mariadb_server() as server:
        yield server


@pytest.fixture
def fresh_db(pg: PostgresServer) -> Callable[[], str]:
    """Makes a new database per call and returns its URL, so tests never share tables."""

    def make() -> str:
        return pg.create_database(f"t{os.getpid()}_{next(_db_names)}")

    return make


StartUwsgi = Callable[..., UwsgiServer]


class UwsgiFleet:
    """The uWSGI masters one test starts, each with its own log directory under the test's
    tmp_path; :meth:`stop_all` at teardown stops every one."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.started: list[UwsgiServer] = []

    def start(self, args: list[str], env: dict[str, str], processes: int) -> UwsgiServer:
        """Start uWSGI with ``args`` and wait until ``processes`` workers are up."""
        log_dir = self.tmp_path / f"uwsgi-{len(self.started)}"
        log_dir.mkdir()
        server = start_uwsgi(args, env=env, cwd=ROOT, processes=processes, log_dir=log_dir)
        self.started.append(server)
        return server

    def stop_all(self, *, graceful: bool) -> None:
        for server in self.started:
            server.stop(graceful=graceful)


@pytest.fixture
def serve(pg: PostgresServer, tmp_path: Path) -> Iterator[StartUwsgi]:
    """Starts ``tests/apps/bug_app.py`` under a real uWSGI master; stops every one at teardown."""
    fleet = UwsgiFleet(tmp_path)

    def start(
        *,
        fix: bool,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
        processes: int = 4,
        master: bool = True,
    ) -> UwsgiServer:
        app_env = {"DATABASE_URL": pg.url(), "DBFIX_FIX": "1" if fix else "0", **(env or {})}
        args = app_args("tests.apps.bug_app:app", processes=processes, root=ROOT, master=master)
        return fleet.start([*args, *options], app_env, processes)

    yield start
    fleet.stop_all(graceful=False)  # the test is done with them: no need to wait
