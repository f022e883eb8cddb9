"""Forks made by Python itself (os.fork), against the real SSL PostgreSQL.

The child reports over a pipe; the parent then proves its own connection still works.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import logging
import os
import select
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from flask_uwsgi_dbfix import DBFixConfig, _compat, forkwatch, register, stamps
from flask_uwsgi_dbfix import engines as dbfix_engines
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

BACKEND = text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)


def raw_fork() -> int:
    """libc's fork() called directly: no Python at-fork hook runs, as when uWSGI (without
    py-call-osafterfork) or a C extension forks. PyDLL keeps the GIL across the call: a
    child forked while another thread held it would hang."""
    libc = ctypes.PyDLL(None, use_errno=True)
    libc.fork.restype = ctypes.c_int
    return int(libc.fork())


def in_child(
    work: Callable[[], dict[str, Any]], fork: Callable[[], int] = os.fork
) -> dict[str, Any]:
    """Run ``work`` in a forked child; return its result (or its error) as a dict."""
    read_fd, write_fd = os.pipe()
    pid = fork()
    assert pid >= 0, "fork failed"
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
    data = _read_until_eof(read_fd, pid, timeout=60)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    return dict(json.loads(data))


def _read_until_eof(fd: int, pid: int, timeout: float) -> bytes:
    """The child's report; a child that hangs (even inside fork's own hooks) is killed."""
    deadline = time.monotonic() + timeout
    chunks: list[bytes] = []
    try:
        while True:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            if not ready:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail(f"the forked child hung for {timeout} s")
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)
    finally:
        os.close(fd)


def guard_only(engine: Engine) -> dbfix_engines.ManagedEngine:
    """Stamp and guard ``engine`` as a managed one, but out of the registry: no fork hook
    knows it, so only the guard protects it (a fork no hook sees)."""
    managed = dbfix_engines.ManagedEngine(engine, "guarded", "register", DBFixConfig(), os.getpid())
    managed.start(engine)
    return managed


@contextlib.contextmanager
def held_by_another_thread(*locks: Any) -> Iterator[None]:
    """Another thread holds ``locks`` for the duration (a fork then copies them held)."""
    holding, release = threading.Event(), threading.Event()

    def hold() -> None:
        with contextlib.ExitStack() as stack:
            for lock in locks:
                stack.enter_context(lock)
            holding.set()
            release.wait(30)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        assert holding.wait(10)
        yield
    finally:
        release.set()
        thread.join()


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


@pytest.mark.parametrize("fork", [os.fork, raw_fork], ids=["os.fork", "raw_fork"])
@pytest.mark.parametrize("pre_ping", [False, True], ids=["plain", "pool_pre_ping"])
@pytest.mark.parametrize("page", [True, False], ids=["fork_page", "getpid"])
@pytest.mark.parametrize("connect_first", [False, True], ids=["empty_pool", "connected_pool"])
def test_pid_guard_replaces_a_connection_checked_out_in_another_process(
    fresh_db: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
    fork: Callable[[], int],
    pre_ping: bool,
    page: bool,
    connect_first: bool,
) -> None:
    """With pool_pre_ping, SQLAlchemy's checkout-event recipe would let the child's ping
    write on the inherited TLS stream first; the guard drops the connection before that.

    Whoever forks (a raw fork runs no Python hook), whether the kernel's fork-wiped page is
    there or the guard falls back to os.getpid(), and whether the pool was empty when it
    was guarded (the guard's fast path in its home process) or already held a connection.
    """
    if not page:
        monkeypatch.setattr(forkwatch, "_watch", forkwatch.ForkWatch(None))
    elif forkwatch.watch().page is None:
        pytest.skip("no MADV_WIPEONFORK page on this kernel: the getpid case covers it")
    engine = create_engine(fresh_db(), pool_size=1, max_overflow=0, pool_pre_ping=pre_ping)
    try:
        if connect_first:
            parent_backend, _ = backend(engine)
        # Tracked but not registered: no at-fork hook disposes it, only the guard protects.
        guard_only(engine)
        if not connect_first:
            parent_backend, _ = backend(engine)

        child = in_child(lambda: {"backend": backend(engine)}, fork)

        assert "error" not in child, child
        assert child["backend"][0] != parent_backend
        assert backend(engine) == (parent_backend, True)
    finally:
        engine.dispose()


@pytest.mark.parametrize("fork", [os.fork, raw_fork], ids=["os.fork", "raw_fork"])
def test_pid_guard_in_a_grandchild(engine: Engine, fork: Callable[[], int]) -> None:
    """A child's pool is guarded in the child (its new home); a fork of that child must
    still get its own connection, not the child's."""
    guard_only(engine)
    parent_backend, _ = backend(engine)

    def child_work() -> dict[str, Any]:
        own = backend(engine)[0]
        grandchild = in_child(lambda: {"backend": backend(engine)}, fork)
        return {"own": own, "grandchild": grandchild, "own_after": backend(engine)[0]}

    child = in_child(child_work, fork)
    assert "error" not in child, child
    assert "error" not in child["grandchild"], child
    backends = {parent_backend, child["own"], child["grandchild"]["backend"][0]}
    assert len(backends) == 3, child
    assert child["own_after"] == child["own"]
    assert backend(engine) == (parent_backend, True)


def test_a_child_that_forks_keeps_its_own_idle_connection_and_does_not_warn(
    engine: Engine,
) -> None:
    """The before-fork close and warning belong to the process that set the engines up: a
    worker (or Celery/multiprocessing child) that forks children of its own keeps its idle
    connection, and says nothing, through Python's own fork hooks (os.fork)."""
    register(engine, name="forks-again")
    backend(engine)

    def child_work() -> dict[str, Any]:
        own = backend(engine)[0]  # the child's own connection, idle in its pool
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append  # type: ignore[method-assign]
        logging.getLogger("flask_uwsgi_dbfix").addHandler(handler)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            grandchild = in_child(lambda: {"backend": backend(engine)})
        logging.getLogger("flask_uwsgi_dbfix").removeHandler(handler)
        return {
            "own": own,
            "own_after": backend(engine)[0],
            "grandchild": grandchild,
            "warned": [str(w.message) for w in caught if "fork" in str(w.message).lower()],
            "logged": [r.getMessage() for r in records if r.levelno >= logging.INFO],
        }

    child = in_child(child_work)
    assert "error" not in child, child
    assert child["own_after"] == child["own"], "the child closed its own idle connection"
    assert child["grandchild"]["backend"][0] != child["own"]
    assert child["warned"] == [] and child["logged"] == [], child


needs_page = pytest.mark.skipif(
    forkwatch.watch().page is None,
    reason="no fork-wiped page: the guard asks os.getpid() on every checkout, no fast path",
)


def _stamp_as_foreign(engine: Engine) -> None:
    """Mark the pool's idle connection as opened by another process: a look at its stamp
    would drop it."""
    (record,) = _compat.idle_records(engine.pool)
    setattr(record, stamps.PID_ATTR, 1)


@needs_page
def test_in_its_home_process_the_guard_trusts_the_pool_without_reading_stamps(
    engine: Engine,
) -> None:
    """The fast path: a pool guarded while empty is at home here, so every record it hands
    out was opened here and its stamp is not read. (Killed mutants: the home generation
    compared wrongly, the page read at the wrong byte, which re-arms it on every checkout.)"""
    guard_only(engine)
    first = backend(engine)[0]
    _stamp_as_foreign(engine)
    assert backend(engine)[0] == first


@needs_page
def test_a_child_whose_pool_was_empty_at_the_fork_makes_it_home_at_its_first_checkout(
    engine: Engine,
) -> None:
    """A raw fork (no hook) of a process whose pool held nothing: the child's first
    checkout finds the pool empty and takes it as its own; from then on the fast path."""
    guard_only(engine)

    def child_work() -> dict[str, Any]:
        first = backend(engine)[0]
        _stamp_as_foreign(engine)
        return {"first": first, "again": backend(engine)[0]}

    child = in_child(child_work, raw_fork)
    assert "error" not in child, child
    assert child["again"] == child["first"]


@pytest.mark.parametrize("page", [True, False], ids=["fork_page", "getpid"])
def test_a_record_stamped_by_any_other_pid_is_dropped_higher_or_lower(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, page: bool
) -> None:
    """The slow path compares the stamp for equality: a child's pid is usually higher than
    its parent's, but pids wrap around, so a record another process opened is dropped
    whether that pid is lower or higher than ours (killed mutants: ``<`` for ``!=``)."""
    if not page:
        monkeypatch.setattr(forkwatch, "_watch", forkwatch.ForkWatch(None))
    elif forkwatch.watch().page is None:
        pytest.skip("no MADV_WIPEONFORK page on this kernel: the getpid case covers it")
    seen = backend(engine)[0]  # connected before the guard: the pool is no one's home
    guard_only(engine)
    for foreign in (1, os.getpid() + 1):
        (record,) = _compat.idle_records(engine.pool)
        setattr(record, stamps.PID_ATTR, foreign)
        now = backend(engine)[0]
        assert now != seen, f"a record stamped by pid {foreign} was handed out as ours"
        seen = now


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
    engine: Engine, connected_before: bool
) -> None:
    """A lock held by another thread at fork time is never released in the child; the
    at-fork hook must not wait for it, and the child must be able to use the package and
    the engine afterwards."""
    register(engine, name="locked")
    (managed,) = [m for m in dbfix_engines.all_engines() if m.engine is engine]
    with held_by_another_thread(dbfix_engines._lock, stamps._recorded_lock):
        with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # the at-fork hook has already run by now
            status = 1
            try:
                dbfix_engines.all_engines()
                backend(engine)  # connects: the engine's own lock and the stamps'
                managed.open_connections()
                status = 0
            finally:
                os._exit(status)
        deadline = time.monotonic() + 10
        while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        if done[0] == 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        assert done[0] == pid, "the child hung in the after-fork hook or after it"
        assert os.waitstatus_to_exitcode(done[1]) == 0


def _fork_with_warnings_off(fork: Callable[[], int], work: Callable[[], dict[str, Any]]) -> Any:
    with warnings.catch_warnings():  # Python 3.12+ warns about forking with threads
        warnings.simplefilter("ignore", DeprecationWarning)
        return in_child(work, fork)


@pytest.fixture(params=["something-connected", "nothing-connected"])
def connected_before(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> bool:
    """Whether a managed engine of this process connected before the fork. When none did
    (a worker of an app that touches no database at import), the child takes a short path
    (forkhooks: each object it touches is memory it stops sharing): both must hold. Other
    tests of this process have connected, so "nothing" is set, not reached."""
    if request.param == "nothing-connected":
        monkeypatch.setattr(dbfix_engines, "_connected", False)
        return False
    monkeypatch.setattr(dbfix_engines, "_connected", True)
    return True


def test_a_pool_that_never_connected_is_kept_and_the_child_still_gets_its_own(
    engine: Engine, connected_before: bool
) -> None:
    """Nothing to drop: the child keeps the parent's empty pool (a new one per worker costs
    memory), its guard makes the child its home, and a fork of the child still gets a
    connection of its own rather than the child's."""
    register(engine, name="empty")
    parent_pool = id(engine.pool)

    def child_work() -> dict[str, Any]:
        kept = id(engine.pool) == parent_pool
        own = backend(engine)[0]
        grandchild = in_child(lambda: {"backend": backend(engine)}, raw_fork)
        return {"kept": kept, "own": own, "grandchild": grandchild, "again": backend(engine)[0]}

    child = in_child(child_work)
    assert "error" not in child, child
    assert child["kept"] is True
    assert child["grandchild"]["backend"][0] != child["own"], child
    assert child["again"] == child["own"]
    parent_backend, _ = backend(engine)
    assert parent_backend not in (child["own"], child["grandchild"]["backend"][0])


@pytest.mark.parametrize("lock", ["_overflow_lock", "_pool.mutex"])
def test_a_pool_whose_lock_a_parent_thread_held_at_fork_is_replaced(
    engine: Engine, lock: str, connected_before: bool
) -> None:
    """A lock held by another thread at fork time stays held in the child for good: the
    child must not keep that pool, even though it holds no connection."""
    register(engine, name="locked_pool")
    parent_pool = id(engine.pool)
    target: Any = engine.pool
    for part in lock.split("."):
        target = getattr(target, part)
    with held_by_another_thread(target):
        child = _fork_with_warnings_off(
            os.fork, lambda: {"kept": id(engine.pool) == parent_pool, "backend": backend(engine)}
        )
    assert "error" not in child, child
    assert child["kept"] is False
