"""Session-wide real servers: one PostgreSQL with SSL on; uWSGI masters per test."""

from __future__ import annotations

import itertools
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

from harness.postgres import PostgresServer, postgres_server
from harness.uwsgi import UwsgiServer, start_uwsgi

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


@pytest.fixture(scope="session")
def pg() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL 15 with ssl=on that refuses TCP without SSL."""
    with postgres_server() as server:
        yield server


@pytest.fixture
def fresh_db(pg: PostgresServer) -> Callable[[], str]:
    """Makes a new database per call and returns its URL, so tests never share tables."""

    def make() -> str:
        return pg.create_database(f"t{os.getpid()}_{next(_db_names)}")

    return make


StartUwsgi = Callable[..., UwsgiServer]


@pytest.fixture
def serve(pg: PostgresServer, tmp_path: Path) -> Iterator[StartUwsgi]:
    """Starts ``tests/apps/bug_app.py`` under a real uWSGI master; stops every one at teardown."""
    started: list[UwsgiServer] = []

    def start(
        *,
        fix: bool,
        env: dict[str, str] | None = None,
        options: tuple[str, ...] = (),
        processes: int = 4,
        master: bool = True,
    ) -> UwsgiServer:
        app_env = {"DATABASE_URL": pg.url(), "DBFIX_FIX": "1" if fix else "0", **(env or {})}
        args = [
            *(["--master"] if master else []),
            "--processes", str(processes),
            "--chdir", str(ROOT),
            "--pythonpath", str(ROOT),
            "--module", "tests.apps.bug_app:app",
            "--need-app",
            *options,
        ]  # fmt: skip
        log_dir = tmp_path / f"uwsgi-{len(started)}"
        log_dir.mkdir()
        server = start_uwsgi(args, env=app_env, cwd=ROOT, processes=processes, log_dir=log_dir)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(graceful=False)  # the test is done with it: no need to wait
