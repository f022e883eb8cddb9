"""Forks made by Python itself (os.fork), against the real SSL PostgreSQL.

The child reports over a pipe; the parent then proves its own connection still works.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from flask_uwsgi_dbfix import register, registry, tracking
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

BACKEND = text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)


def in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child; return its result (or its error) as a dict."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        os.close(read_fd)
        try:
            result = work()
        except BaseException as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        gc.collect()  # what an exiting worker does to whatever it dropped
        os.write(write_fd, json.dumps(result).encode())
        os._exit(0)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(data))


def backend(engine: Engine) -> tuple[int, bool]:
    with engine.connect() as conn:
        pid, ssl = conn.execute(BACKEND).one()
    return int(pid), bool(ssl)


@pytest.fixture
def engine(fresh_db: Callable[[], str]) -> Iterator[Engine]:
    eng = create_engine(fresh_db(), pool_size=1, max_overflow=0, pool_timeout=5)
    yield eng
    eng.dispose()


def test_registered_engine_child_gets_own_backend_and_parent_keeps_working(
    engine: Engine,
) -> None:
    # close_before_fork off: the parent keeps its idle connection and the child inherits it
    # (test_master_fork.py covers the parent closing it first).
    register(engine, name="forktest", close_before_fork=False)
    parent_backend, ssl = backend(engine)  # now idle in the pool: the child inherits it
    assert ssl

    child = in_child(lambda: {"backend": backend(engine)})

    assert "error" not in child, child
    assert child["backend"][0] != parent_backend
    assert child["backend"][1] is True
    # Same pooled connection, same backend, still healthy after the child exited.
    assert backend(engine) == (parent_backend, True)


def test_control_a_child_that_closes_the_inherited_connection_breaks_the_parent(
    engine: Engine,
) -> None:
    """Why dispose(close=False): close=True in a child ends the parent's session.

    Proves the test above can fail: the same check catches the wrong fix."""
    parent_backend, _ = backend(engine)

    def wrong_fix() -> dict[str, Any]:
        engine.dispose()  # close=True: sends Terminate on the shared socket
        return {}

    in_child(wrong_fix)
    with pytest.raises(Exception, match="SSL|closed|terminat"):
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))


@pytest.mark.parametrize("pre_ping", [False, True], ids=["plain", "pool_pre_ping"])
def test_pid_guard_replaces_a_connection_checked_out_in_another_process(
    fresh_db: Callable[[], str], pre_ping: bool
) -> None:
    """With pool_pre_ping, SQLAlchemy's checkout-event recipe would let the child's ping
    write on the inherited TLS stream first; the guard drops the connection before that."""
    engine = create_engine(fresh_db(), pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
    try:
        # Tracked but not registered: no at-fork hook disposes it, only the guard protects.
        tracking.track(engine, pid_guard=True)
        parent_backend, _ = backend(engine)

        child = in_child(lambda: {"backend": backend(engine)})

        assert "error" not in child, child
        assert child["backend"][0] != parent_backend
        assert backend(engine) == (parent_backend, True)
    finally:
        engine.dispose()


def test_without_guard_or_hook_the_child_reuses_the_parents_backend(engine: Engine) -> None:
    """Control for the guard test: the same fork with nothing installed shares the backend."""
    parent_backend, _ = backend(engine)
    child = in_child(lambda: {"backend": backend(engine)})
    assert child.get("backend", [parent_backend])[0] == parent_backend


def test_connection_checked_out_across_the_fork_is_never_used_by_the_child(
    engine: Engine,
) -> None:
    register(engine, name="held")
    held = engine.connect()  # still checked out, mid-transaction, when we fork
    parent_backend = held.execute(BACKEND).one()[0]

    def child_work() -> dict[str, Any]:
        held.close()  # would roll back on the parent's socket if it were still attached
        return {"backend": backend(engine)}

    child = in_child(child_work)

    assert "error" not in child, child
    assert child["backend"][0] != parent_backend
    assert held.execute(BACKEND).one() == (parent_backend, True)
    held.close()


def test_fork_while_another_thread_holds_the_extensions_locks_does_not_hang(
    engine: Engine,
) -> None:
    """A lock held by another thread at fork time is never released in the child; the
    at-fork hook must not wait for it."""
    register(engine, name="locked")
    holding, release = threading.Event(), threading.Event()

    def hold_locks() -> None:
        with registry._lock, tracking._trackers_lock:
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold_locks)
    thread.start()
    try:
        assert holding.wait(10)
        with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:
            os._exit(0)  # the at-fork hook has already run by now
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] == pid, "the child hung in the after-fork hook"
    finally:
        release.set()
        thread.join()
