"""Issue 7 with forks made by Python itself (os.fork, multiprocessing), on the SSL PostgreSQL:
every connection the parent holds is seen whatever the order of set-up, the parent closes
its idle ones before forking, a Session held across the fork fails once with a clear
error and recovers, and a forking parent warns once."""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import sys
import textwrap
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from flask_uwsgi_dbfix import (
    HeldAcrossForkError,
    PreForkConnectionWarning,
    forkhooks,
    register,
    testing,
)
from flask_uwsgi_dbfix import engines as dbfix_engines
from harness.postgres import PostgresServer, default_driver
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture
from tests.pgstat import backend_alive
from tests.test_fork_inprocess import BACKEND, backend, in_child

HELD_MESSAGE = "this connection was in use when the process forked (opened at "


@pytest.fixture(autouse=True)
def parent_not_warned_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The parent warns once per process; each test is a fresh parent."""
    monkeypatch.setattr(forkhooks._hooks, "parent_warned", False)


@pytest.fixture
def make_engine(fresh_db: Callable[[], str]) -> Iterator[Callable[..., Engine]]:
    made: list[Engine] = []

    def make(**kw: Any) -> Engine:
        engine = create_engine(fresh_db(), **kw)
        made.append(engine)
        return engine

    yield make
    for engine in made:
        engine.dispose()


def line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# MARK: {marker}"))


def test_parent_closes_its_idle_connection_before_forking(
    pg: PostgresServer, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine()
    register(engine, name="closing")
    parent_backend, _ = backend(engine)  # idle in the pool now
    child = in_child(lambda: {"backend": backend(engine)})
    assert "error" not in child, child
    assert not backend_alive(pg, parent_backend), "the parent kept its idle connection"
    assert child["backend"][0] != parent_backend
    assert backend(engine)[0] not in (parent_backend, child["backend"][0])  # reconnected


def test_the_close_counts_only_idle_connections_and_leaves_the_checked_out_one(
    pg: PostgresServer, make_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """With one connection checked out and two idle, the parent closes the two, says "closed
    2", and the held one keeps its backend (the warning counts it, checked out)."""
    engine = make_engine()
    register(engine, name="counting")
    held = engine.connect()
    held_backend = held.execute(BACKEND).one()[0]
    first, second = engine.connect(), engine.connect()
    idle = {first.execute(BACKEND).one()[0], second.execute(BACKEND).one()[0]}
    first.close()
    second.close()  # both idle in the pool now
    try:
        with caplog.at_level(logging.INFO, logger="flask_uwsgi_dbfix"):
            with pytest.warns(PreForkConnectionWarning, match="1 checked out at fork time"):
                child = in_child(lambda: {"backend": backend(engine)})
        assert "error" not in child, child
        closed = [r.getMessage() for r in caplog.records if "closed" in r.getMessage()]
        assert len(closed) == 1 and "closed 2 idle database connection(s)" in closed[0], closed
        assert not any(backend_alive(pg, b) for b in idle)
        assert held.execute(BACKEND).one()[0] == held_backend
    finally:
        # The close replaced the engine's pool (dispose()): the held connection would go
        # back to the old one and stay open until a GC pass; a later test would count it.
        held.invalidate()
        held.close()


def test_control_with_close_before_fork_off_the_parent_keeps_it_open(
    pg: PostgresServer, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine()
    register(engine, name="keeping", close_before_fork=False)
    parent_backend, _ = backend(engine)
    with pytest.warns(PreForkConnectionWarning, match="1 database connection"):
        child = in_child(lambda: {"backend": backend(engine)})
    assert "error" not in child, child
    assert backend_alive(pg, parent_backend)
    assert backend(engine)[0] == parent_backend


def test_one_engine_failing_to_close_leaves_the_others_closed_and_says_which(
    pg: PostgresServer, make_engine: Callable[..., Engine], caplog: pytest.LogCaptureFixture
) -> None:
    """A user's ``engine_disposed`` listener raises on the first engine: the second still
    closes its idle connection before the fork, and a WARNING names the first."""
    failing, fine = make_engine(), make_engine()
    register(failing, name="failing")
    register(fine, name="fine")

    def boom(engine: Engine) -> None:
        raise RuntimeError("a user's listener failed")

    event.listen(failing, "engine_disposed", boom)
    try:
        _, _ = backend(failing)
        fine_backend, _ = backend(fine)
        with caplog.at_level(logging.WARNING, logger="flask_uwsgi_dbfix"):
            child = in_child(lambda: {"backend": backend(fine)})
    finally:
        event.remove(failing, "engine_disposed", boom)  # the fixture disposes it
    assert "error" not in child, child
    assert not backend_alive(pg, fine_backend), "the second engine kept its idle connection"
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'failing'" in m and "a user's listener failed" in m for m in warned), warned
    assert all(pg.password not in m for m in warned)


def child_uses_held_session(session: Any, engine: Engine) -> dict[str, Any]:
    """In the child: the held Session's first use, then (after rollback) the next one."""
    result: dict[str, Any] = {"own": backend(engine)[0]}
    try:
        session.execute(BACKEND)
        result["first"] = "no error"
    except Exception as exc:
        result["first"] = str(exc)
        result["invalidated"] = bool(getattr(exc, "connection_invalidated", False))
        result["ours"] = isinstance(getattr(exc, "orig", None), HeldAcrossForkError)
    session.rollback()
    result["second"] = session.execute(BACKEND).one()[0]
    session.close()
    return result


@pytest.mark.parametrize("driver", ["postgresql+psycopg2", "postgresql+psycopg"])
def test_session_held_across_fork_fails_once_with_the_message_then_recovers(
    pg: PostgresServer, fresh_db: Callable[[], str], driver: str
) -> None:
    url = fresh_db().replace(f"{default_driver()}://", f"{driver}://")
    engine = create_engine(url)
    session = Session(engine)
    try:
        register(engine, name="held")
        parent_backend = session.execute(BACKEND).one()[0]  # MARK: session held
        with pytest.warns(PreForkConnectionWarning, match="1 checked out at fork time"):
            child = in_child(lambda: child_uses_held_session(session, engine))
        assert "error" not in child, child
        where = f"{__file__}:{line_of('session held')} in"
        assert child["first"].startswith("(flask_uwsgi_dbfix.held.ConnectionHeldAcrossFork) ")
        assert HELD_MESSAGE + where in child["first"]
        assert "close the Session/Connection before the fork" in child["first"]
        assert child["invalidated"] is True  # SQLAlchemy saw a disconnect
        assert child["ours"] is True  # users can catch flask_uwsgi_dbfix.HeldAcrossForkError
        assert child["second"] != parent_backend
        # Only the broken connection was dropped: the child's own pooled one (opened before
        # the error) is handed out again, the pool was not invalidated as a whole.
        assert child["second"] == child["own"]
        # The parent's Session and connection are untouched.
        assert session.execute(BACKEND).one()[0] == parent_backend
    finally:
        session.close()
        engine.dispose()


def test_control_without_the_fix_the_held_session_runs_on_the_parents_socket(
    make_engine: Callable[..., Engine],
) -> None:
    engine = make_engine()
    session = Session(engine)
    parent_backend = session.execute(BACKEND).one()[0]

    def child_work() -> dict[str, Any]:
        return {"backend": session.execute(BACKEND).one()[0]}

    child = in_child(child_work)
    # Same backend (the bug), or the shared TLS stream broke under it.
    assert child.get("backend") == parent_backend or "error" in child, child
    with contextlib.suppress(Exception):  # the child may have broken the parent's stream
        session.close()


def test_register_after_use_covers_idle_and_a_scoped_session_held_at_fork(
    pg: PostgresServer, make_engine: Callable[..., Engine]
) -> None:
    """CKAN style: a scoped_session queries at import and is never closed; the engine is
    registered only afterwards. It used to be neither counted nor protected. Where the
    connections were opened is known here because something recorded it (a test suite's
    record_origins(), or `flask dbfix check`)."""
    engine = make_engine()
    testing.record_origins()
    try:
        scoped = scoped_session(sessionmaker(bind=engine))
        held_backend = scoped.execute(BACKEND).one()[0]  # MARK: scoped held
        backend(engine)  # MARK: idle before register
    finally:
        testing.stop_recording_origins()
    register(engine, name="late", close_before_fork=False)
    opened = dbfix_engines.open_connections(engine)
    assert sorted(c.checked_out for c in opened) == [False, True]
    origins = {c.checked_out: c.origin for c in opened}
    assert origins[True] is not None and origins[False] is not None
    assert (origins[True].filename, origins[True].lineno) == (__file__, line_of("scoped held"))
    assert origins[False].function == "backend"  # the helper that connected, in the tests
    with pytest.warns(PreForkConnectionWarning, match="2 database connection"):
        child = in_child(lambda: child_uses_held_session(scoped, engine))
    assert "error" not in child, child
    assert child["own"] != held_backend
    assert HELD_MESSAGE in child["first"]
    assert child["second"] != held_backend
    assert scoped.execute(BACKEND).one()[0] == held_backend  # the parent's still works
    scoped.remove()


def test_connections_opened_before_the_package_was_switched_on_are_counted_and_dropped(
    make_engine: Callable[..., Engine],
) -> None:
    """Nothing recorded who opened them: they are still found, dropped in the child, and
    said to come from an unknown place."""
    engine = make_engine()
    held = engine.connect()
    held_backend = held.execute(BACKEND).one()[0]
    parent_idle = backend(engine)[0]
    register(engine, name="early", close_before_fork=False)
    opened = dbfix_engines.open_connections(engine)
    assert sorted(c.checked_out for c in opened) == [False, True]
    assert [c.origin for c in opened] == [None, None]
    assert {c.pid for c in opened} == {os.getpid()}

    def child_work() -> dict[str, Any]:
        own = backend(engine)[0]
        try:
            held.execute(BACKEND)
            first = "no error"
        except Exception as exc:
            first = str(exc)
        return {"own": own, "first": first}

    with pytest.warns(PreForkConnectionWarning, match="opened before flask-uwsgi-dbfix was"):
        child = in_child(child_work)
    assert child["own"] not in (parent_idle, held_backend)
    assert "(opened at an unknown place)" in child["first"]
    assert held.execute(BACKEND).one()[0] == held_backend
    held.close()


FAKELIB = """
from sqlalchemy import text


def warm_up(engine):
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))  # the library's line that connects
"""


def test_origin_is_the_users_line_via_the_library_that_connected(
    tmp_path: Path, make_engine: Callable[..., Engine], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A "library" simulated by a module in a directory named site-packages on sys.path,
    which is how installed packages (Flask-AppBuilder...) are told from the app."""
    lib_dir = tmp_path / "lib" / "site-packages"
    lib_dir.mkdir(parents=True)
    (lib_dir / "fakelib_inproc.py").write_text(textwrap.dedent(FAKELIB))
    monkeypatch.syspath_prepend(str(lib_dir))
    import fakelib_inproc  # type: ignore[import-not-found]

    engine = make_engine()
    register(engine, name="via")
    fakelib_inproc.warm_up(engine)  # MARK: user calls library
    (opened,) = dbfix_engines.open_connections(engine)
    origin = opened.origin
    assert origin is not None and origin.via is not None
    assert (origin.filename, origin.lineno) == (__file__, line_of("user calls library"))
    assert origin.function == "test_origin_is_the_users_line_via_the_library_that_connected"
    assert (origin.via.filename, origin.via.function) == (fakelib_inproc.__file__, "warm_up")
    assert str(origin) == (
        f"{__file__}:{origin.lineno} in {origin.function} "
        f"(via {fakelib_inproc.__file__}:{origin.via.lineno} in warm_up)"
    )
    sys.modules.pop("fakelib_inproc", None)


def fork_children(how: str, count: int) -> None:
    if how == "os.fork":
        for _ in range(count):
            pid = os.fork()
            if pid == 0:
                os._exit(0)
            os.waitpid(pid, 0)
    else:
        ctx = multiprocessing.get_context("fork")
        for _ in range(count):
            process = ctx.Process(target=int)
            process.start()
            process.join(30)
            assert process.exitcode == 0


@pytest.mark.parametrize("how", ["os.fork", "multiprocessing"])
@pytest.mark.parametrize("state", ["checked out", "idle, close_before_fork off"])
def test_a_forking_parent_warns_once_for_four_children(
    make_engine: Callable[..., Engine], how: str, state: str
) -> None:
    """gunicorn, Celery and RQ parents fork many children: one warning per parent, for
    what it could not (checked out) or did not (switch off) close."""
    engine = make_engine()
    register(engine, name="parent", close_before_fork=state == "checked out")
    held = engine.connect() if state == "checked out" else None  # MARK: parent holds
    if held is None:
        backend(engine)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fork_children(how, 4)
    ours = [w for w in caught if issubclass(w.category, PreForkConnectionWarning)]
    assert len(ours) == 1, [str(w.message) for w in ours]
    # (Engines of earlier tests may still be open in this process: look at this one.)
    assert "engine 'parent' (" in str(ours[0].message)
    assert "): 1 connection(s)" in str(ours[0].message)
    if held is not None:
        assert f"{__file__}:{line_of('parent holds')} in" in str(ours[0].message)
        held.close()


@pytest.mark.parametrize("kind", ["psycopg", "sqlite file"])
def test_connections_a_child_drops_on_purpose_never_warn(
    fresh_db: Callable[[], str], tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """psycopg 3 (any Python) and sqlite3 (Python 3.13+) warn ResourceWarning when an
    unclosed connection is garbage collected; a child forgetting the parent's must not."""
    if kind == "psycopg":
        url = fresh_db().replace(f"{default_driver()}://", "postgresql+psycopg://")
    else:
        url = f"sqlite:///{tmp_path / 'file.db'}"
    engine = create_engine(url)
    try:
        register(engine, name="dropped", close_before_fork=False)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")

        caught: list[str] = []

        def child_work() -> dict[str, Any]:
            with engine.connect() as conn:  # the forgetting ran already, in the fork hook
                conn.exec_driver_sql("SELECT 1")
            gc.collect()
            found = caught + [str(w.message) for w in recorded if w.category is ResourceWarning]
            return {"warnings": found}

        # Set up in the parent, so that the child records from the very fork on.
        with warnings.catch_warnings(record=True) as recorded:
            warnings.simplefilter("always")
            monkeypatch.setattr(sys, "unraisablehook", lambda u: caught.append(repr(u)))
            child = in_child(child_work)
        assert child == {"warnings": []}
    finally:
        engine.dispose()
