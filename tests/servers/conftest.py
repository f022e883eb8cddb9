"""Fixtures for the server and event tests: one Redis per session (next to the session's
PostgreSQL), and factories that start the shared test app under real servers and stop every
one of them at teardown."""

from __future__ import annotations

import gc
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness.gunicorn import GunicornServer, start_gunicorn
from harness.pgbouncer import PgBouncerServer, pgbouncer_server
from harness.postgres import PostgresServer
from harness.redis import RedisServer, redis_server
from harness.uwsgi import UwsgiServer, app_args
from tests.conftest import UwsgiFleet

ROOT = Path(__file__).resolve().parents[2]
WEB_MODULE = "tests.servers.apps.web"
# The master keeps (does not close before forking) its idle connections: the workers
# inherit them and the warning says so, once per startup.
KEEP_MASTER_CONNECTIONS = {"WEB_DBFIX_CLOSE_BEFORE_FORK": "0"}
WARNING_NAME = "PreForkConnectionWarning"
FIX = pytest.mark.parametrize("fix", [False, True], ids=["nofix", "fix"])
"""Every server/event test runs without the fix (it must show the bug) and with it."""


@pytest.fixture(autouse=True)
def forget_registered_engines() -> Iterator[None]:
    """Engines these tests register() are held weakly by the package; collect them once a
    test is done, so that later tests (``flask dbfix check`` lists every registered engine
    of the process) never see another test's."""
    yield
    gc.collect()


@pytest.fixture(scope="session")
def redis() -> Iterator[RedisServer]:
    """Debian's redis-server on a free port, no persistence, for Celery and RQ."""
    with redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def pgbouncer(pg: PostgresServer) -> Iterator[PgBouncerServer]:
    """Debian's PgBouncer in front of the session's PostgreSQL, TLS on both sides; its
    databases ``app_transaction`` and ``app_session`` pool by transaction and by session."""
    with pgbouncer_server(pg) as server:
        yield server


def app_env(pg: PostgresServer, fix: bool, **extra: str) -> dict[str, str]:
    return {"DATABASE_URL": pg.url(), "DBFIX_FIX": "1" if fix else "0", **extra}


StartWeb = Callable[..., UwsgiServer]


@pytest.fixture
def web(pg: PostgresServer, tmp_path: Path) -> Iterator[StartWeb]:
    """Serves ``tests/servers/apps/web.py`` under a real uWSGI master."""
    fleet = UwsgiFleet(tmp_path)

    def start(
        *,
        fix: bool,
        processes: int = 2,
        options: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
        ready_workers: int | None = None,
    ) -> UwsgiServer:
        args = [
            *app_args(f"{WEB_MODULE}:app", processes=processes, root=ROOT),
            "--disable-logging",
            # pyuwsgi's master re-executes the interpreter on reload: without this it runs
            # the base Python, outside the virtualenv, and cannot import pyuwsgi.
            "--binary-path", sys.executable,
            *options,
        ]  # fmt: skip
        ready = processes if ready_workers is None else ready_workers
        return fleet.start(args, app_env(pg, fix, **(env or {})), ready)

    yield start
    fleet.stop_all(graceful=False)  # done with them: no need to wait for a graceful exit


StartGunicorn = Callable[..., GunicornServer]


@pytest.fixture
def gunicorn(pg: PostgresServer, tmp_path: Path) -> Iterator[StartGunicorn]:
    """Serves the same app under a real gunicorn arbiter with ``--preload``."""
    started: list[GunicornServer] = []

    def start(
        *,
        fix: bool,
        workers: int = 4,
        args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> GunicornServer:
        server = start_gunicorn(
            f"{WEB_MODULE}:app",
            ["--preload", *args],
            workers=workers,
            log_dir=tmp_path,
            env=app_env(pg, fix, **(env or {})),
            cwd=ROOT,
        )
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop(graceful=False)  # done with it: no need to wait for a graceful exit
