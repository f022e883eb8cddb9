"""``assert_fork_safe``: the helper users put in their own suites, on real forks.

Against the real SSL PostgreSQL (psycopg2 and psycopg 3) and file SQLite. Every failing case
is the same app without the protection, so each passing case is shown able to fail.
"""

from __future__ import annotations

import gc
import importlib
import os
import subprocess
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import Connection, Engine, create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool.base import _ConnectionRecord

from flask_uwsgi_dbfix import FlaskDBFix, testing
from flask_uwsgi_dbfix._compat import flask_sqlalchemy_engines
from flask_uwsgi_dbfix.testing import assert_fork_safe
from harness.postgres import PostgresServer
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

Built = tuple[Flask, int]
"""An app and the line of this file that opened its pre-fork connection."""

BACKEND = text(
    "SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())"
)
HERE = Path(__file__).resolve()


def line_below() -> int:
    return sys._getframe(1).f_lineno + 1


def make_app(url: str, *, fix: bool) -> Built:
    """A Flask-SQLAlchemy app that opens a connection while it is created, like most do."""
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    db = SQLAlchemy(app)
    if fix:
        FlaskDBFix(app)
    with app.app_context():
        line = line_below()
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    return app, line


def engine_of(app: Flask) -> Engine:
    return flask_sqlalchemy_engines(app)[None]


def masked(url: str) -> str:
    return make_url(url).render_as_string(hide_password=True)


def opened_at(line: int, function: str = "make_app") -> str:
    return f"opened at {HERE}:{line} in {function}"


@pytest.fixture
def build(fresh_db: Callable[[], str]) -> Iterator[Callable[..., Built]]:
    """Builds apps on a fresh database each; disposes their engines at teardown, so that
    no later test finds them alive with connections."""
    apps: list[Flask] = []

    def make(*, fix: bool, url: str | None = None) -> Built:
        app, line = make_app(url or fresh_db(), fix=fix)
        apps.append(app)
        return app, line

    yield make
    for app in apps:
        engine_of(app).dispose()


def unsafe_message(url: str, line: int) -> str:
    return (
        "assert_fork_safe: 1 engine(s) not safe to fork:\n"
        f"  engine 'default' ({masked(url)})\n"
        "    the forked child was handed a connection this process opened"
        " (engine not managed by flask-uwsgi-dbfix)\n"
        f"    {opened_at(line)}\n"
        "    fix: FlaskDBFix(app) (it covers every bind), or close it before the app is"
        " served: engine.dispose() once the start-up work is done"
    )


def test_app_with_the_fix_and_a_prefork_connection_passes(build: Callable[..., Built]) -> None:
    app, line = build(fix=True)

    check = assert_fork_safe(app)

    [default] = [e for e in check.engines if e.url == masked(str(engine_of(app).url))]
    assert (default.name, default.managed, default.child) == ("default", True, "new")
    assert default.opened_at == (f"{HERE}:{line} in make_app",)
    assert str(check).startswith("assert_fork_safe: fork-safe, ")
    assert (
        f"  engine 'default' ({masked(str(engine_of(app).url))})\n"
        "    1 connection(s) open before the fork; the child got a new one\n"
        f"    {opened_at(line)}"
    ) in str(check)


def test_app_without_the_fix_fails_naming_the_engine_and_the_line(
    build: Callable[..., Built], pg: PostgresServer
) -> None:
    app, line = build(fix=False)
    url = str(engine_of(app).url.render_as_string(hide_password=False))

    with pytest.raises(AssertionError) as failed:
        assert_fork_safe(app)

    assert str(failed.value) == unsafe_message(url, line)
    assert pg.password not in str(failed.value)
    assert "***" in str(failed.value)


def test_strict_fails_even_the_safe_app_on_its_prefork_connection(
    build: Callable[..., Built],
) -> None:
    app, line = build(fix=True)
    url = engine_of(app).url.render_as_string(hide_password=False)

    with pytest.raises(AssertionError) as failed:
        assert_fork_safe(app, strict=True)

    assert str(failed.value) == (
        "assert_fork_safe: 1 engine(s) not safe to fork (strict):\n"
        f"  engine 'default' ({masked(url)})\n"
        "    1 connection(s) open before the fork (strict): workers drop their copies, but"
        " this process keeps them open on the database server for nothing\n"
        f"    {opened_at(line)}\n"
        "    fix: open no connection while the app is created, or call engine.dispose()"
        " once that start-up work is done"
    )


def test_the_check_leaves_the_parents_pool_as_it_was(build: Callable[..., Built]) -> None:
    """Its fork only looks: the extension's before-fork hook must not close the caller's
    idle connections (DBFIX_CLOSE_BEFORE_FORK is on by default), so the verdict does not
    depend on how often or in which order it is called."""
    app, _ = build(fix=True)
    pool = engine_of(app).pool
    idle = pool.checkedin()  # type: ignore[attr-defined]
    assert idle == 1
    for _ in range(2):
        with pytest.raises(AssertionError, match=r"1 connection\(s\) open before the fork"):
            assert_fork_safe(app, strict=True)
        assert pool.checkedin() == idle  # type: ignore[attr-defined]


def test_strict_passes_an_app_that_disposes_after_its_startup_work(
    build: Callable[..., Built],
) -> None:
    app, _ = build(fix=True)
    engine_of(app).dispose()  # what the strict failure tells users to do

    check = assert_fork_safe(app, strict=True)

    assert check.failures == ()


def test_an_unmanaged_extra_engine_fails(
    build: Callable[..., Built], fresh_db: Callable[[], str]
) -> None:
    app, _ = build(fix=True)
    url = fresh_db()
    extra = create_engine(url)  # the app's own reporting engine, never register()-ed
    try:
        line = line_below()
        with extra.connect() as conn:
            conn.execute(text("SELECT 1"))

        with pytest.raises(AssertionError) as failed:
            assert_fork_safe(app)
    finally:
        extra.dispose()

    assert str(failed.value) == (
        "assert_fork_safe: 1 engine(s) not safe to fork:\n"
        f"  engine 'unmanaged' ({masked(url)})\n"
        "    the forked child was handed a connection this process opened"
        " (engine not managed by flask-uwsgi-dbfix)\n"
        f"    {opened_at(line, 'test_an_unmanaged_extra_engine_fails')}\n"
        "    fix: flask_uwsgi_dbfix.register(engine), or close it before the app is served:"
        " engine.dispose() once the start-up work is done"
    )


def test_a_connection_checked_out_at_fork_fails_even_with_the_fix(
    build: Callable[..., Built],
) -> None:
    app, line = build(fix=True)
    engine = engine_of(app)
    held: Connection = engine.connect()  # a Session/Connection left open by the factory
    try:
        with pytest.raises(AssertionError) as failed:
            assert_fork_safe(app)
    finally:
        held.close()

    assert str(failed.value) == (
        "assert_fork_safe: 1 engine(s) not safe to fork:\n"
        f"  engine 'default' ({masked(engine.url.render_as_string(hide_password=False))})\n"
        "    1 connection(s) checked out (held by a Connection or Session) when the process"
        " forked: unusable in every worker\n"
        f"    {opened_at(line)}\n"
        "    fix: close it before the app is served (`with engine.connect() as conn:`,"
        " `with Session() as session:`)"
    )


@pytest.mark.parametrize("fix", [True, False], ids=["fix", "no-fix"])
def test_psycopg3_app(build: Callable[..., Built], pg: PostgresServer, fix: bool) -> None:
    name = f"p3_{os.getpid()}_{int(fix)}"
    pg.create_database(name)
    url = pg.url(driver="postgresql+psycopg", dbname=name)
    app, line = build(fix=fix, url=url)
    assert engine_of(app).dialect.driver == "psycopg"

    if fix:
        assert assert_fork_safe(app).failures == ()
    else:
        with pytest.raises(AssertionError) as failed:
            assert_fork_safe(app)
        assert str(failed.value) == unsafe_message(url, line)


@pytest.mark.parametrize("fix", [True, False], ids=["fix", "no-fix"])
def test_sqlite_file_app(tmp_path: Path, fix: bool) -> None:
    url = f"sqlite:///{tmp_path / 'app.db'}"
    app, line = make_app(url, fix=fix)
    try:
        if fix:
            assert assert_fork_safe(app).failures == ()
        else:
            with pytest.raises(AssertionError) as failed:
                assert_fork_safe(app)
            assert str(failed.value) == unsafe_message(url, line)
    finally:
        engine_of(app).dispose()


def test_in_memory_sqlite_is_skipped_like_the_extension_does() -> None:
    app, _ = make_app("sqlite://", fix=False)  # a fork copies it safely
    try:
        check = assert_fork_safe(app)
    finally:
        engine_of(app).dispose()

    assert not any(e.url == "sqlite://" for e in check.engines)
    assert check.failures == ()


@pytest.mark.parametrize("fix", [False, True], ids=["no-fix", "fix"])
def test_the_parents_connection_still_works_afterwards(
    fresh_db: Callable[[], str], fix: bool
) -> None:
    """Without the fix the child is handed the parent's very connection: it must only look
    at it. The same pooled backend then still answers the parent, over SSL. With the fix
    too: the helper's fork is a probe, which the before-fork close leaves alone (a second
    path to the probe exemption, beside test_the_check_leaves_the_parents_pool_as_it_was)."""
    engine = create_engine(fresh_db(), pool_size=1, max_overflow=0, pool_timeout=5)
    app = Flask(__name__)
    try:
        if fix:
            FlaskDBFix.register(engine, name="reporting")
        with engine.connect() as conn:
            before = tuple(conn.execute(BACKEND).one())
        assert before[1] is True

        if fix:
            assert_fork_safe(app)
        else:
            with pytest.raises(AssertionError, match="handed a connection this process opened"):
                assert_fork_safe(app)

        with engine.connect() as conn:
            after = tuple(conn.execute(BACKEND).one())
        assert after == before
    finally:
        engine.dispose()


def test_forking_with_a_thread_alive_emits_no_deprecation_warning(
    build: Callable[..., Built],
) -> None:
    """Python 3.12+ warns about fork() while threads run. CPython drops that warning when a
    filter turns it into an error, but it still lands in pytest's summary and in recwarn or
    pytest.warns blocks; recorded with "always", none may come from our fork."""
    app, _ = build(fix=True)
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, args=(30,), daemon=True)
    thread.start()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert assert_fork_safe(app).failures == ()
    finally:
        stop.set()
        thread.join(timeout=30)
    assert [str(w.message) for w in caught] == []


def test_without_os_fork_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(os, "fork")
    with pytest.raises(RuntimeError, match=r"needs os\.fork\(\), which this platform does not"):
        assert_fork_safe(Flask(__name__))


@pytest.fixture(autouse=True)
def recording_origins() -> Iterator[None]:
    """What the docs tell users to do at the top of conftest.py, undone after each test so
    that the rest of this suite runs without the process-wide listener."""
    testing.record_origins()
    yield
    testing.stop_recording_origins()


@pytest.mark.parametrize("fix", [True, False], ids=["fix", "no-fix"])
def test_a_connection_opened_before_anything_recorded_it(tmp_path: Path, fix: bool) -> None:
    """A managed engine records where its connections are opened; an unmanaged one only
    with record_origins() on. Without either, the report says so and how to get the line
    named, on a managed engine (passes) and an unmanaged one (fails)."""
    testing.stop_recording_origins()
    url = f"sqlite:///{tmp_path / 'early.db'}"
    app, line = make_app(url, fix=fix)
    engine = engine_of(app)
    try:
        if fix:  # managed, and so recorded: simulate a connection opened before FlaskDBFix
            for record in gc.get_objects():
                if isinstance(record, _ConnectionRecord) and record.dbapi_connection is not None:
                    setattr(record, "_flask_uwsgi_dbfix_origin", None)  # noqa: B010
        unknown = (
            "an unknown place (opened before anything recorded it; call "
            "flask_uwsgi_dbfix.testing.record_origins() at the top of conftest.py to see where)"
        )
        if fix:
            [check] = assert_fork_safe(app).engines[:1]
            assert check.opened_at == (unknown,)
        else:
            with pytest.raises(AssertionError) as failed:
                assert_fork_safe(app)
            assert f"    opened at {unknown}\n" in str(failed.value)
    finally:
        engine.dispose()


def test_a_failure_inside_the_child_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = make_app(f"sqlite:///{tmp_path / 'app.db'}", fix=True)

    def broken(*args: object) -> str:
        raise ValueError("no pool here")

    monkeypatch.setattr(testing, "_ask_pool", broken)  # the forked child inherits the patch
    try:
        with pytest.raises(
            RuntimeError,
            match="the check failed in the forked child: ValueError: no pool here",
        ):
            assert_fork_safe(app)
    finally:
        engine_of(app).dispose()


def test_a_child_that_hangs_is_killed_after_the_timeout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, _ = make_app(f"sqlite:///{tmp_path / 'app.db'}", fix=True)

    def stuck(*args: object) -> str:
        threading.Event().wait(60)  # like a lock another thread held at the fork
        return "new"

    monkeypatch.setattr(testing, "_ask_pool", stuck)
    monkeypatch.setattr(testing, "CHILD_TIMEOUT", 0.5)
    try:
        with pytest.raises(RuntimeError, match=r"did not answer within 0\.5 s \(a lock held"):
            assert_fork_safe(app)
    finally:
        engine_of(app).dispose()


UNSAFE_TEST_FILE = """
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix.testing import assert_fork_safe


def test_app_is_fork_safe(tmp_path):
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'app.db'}"
    db = SQLAlchemy(app)
    with app.app_context(), db.engine.connect() as conn:
        conn.execute(text("SELECT 1"))
    assert_fork_safe(app)
"""


def test_a_failure_under_pytests_default_traceback_is_the_test_line_and_the_message(
    tmp_path: Path,
) -> None:
    """A user's failing test, run by a real pytest with its default --tb=auto: the helper's
    own frames (source and docstring, 88 lines before) are hidden."""
    (tmp_path / "test_unsafe.py").write_text(UNSAFE_TEST_FILE)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "test_unsafe.py"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )

    assert run.returncode == 1, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if "FAILURES" in line)
    end = next(i for i, line in enumerate(lines) if "short test summary" in line)
    failure = lines[start:end]
    assert len(failure) <= 20, "\n".join(failure)
    assert ">       assert_fork_safe(app)" in failure
    assert "E       AssertionError: assert_fork_safe: 1 engine(s) not safe to fork:" in failure
    assert any(line.startswith("E           fix: FlaskDBFix(app)") for line in failure)
    assert not any("def assert_fork_safe" in line or "testing.py" in line for line in failure)


OTHER_APP_MODULE = """
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text

app = Flask(__name__)  # built at import, without the fix, by a module a test imported
app.config["SQLALCHEMY_DATABASE_URI"] = {app_url!r}
db = SQLAlchemy(app)
with app.app_context(), db.engine.connect() as conn:
    conn.execute(text("SELECT 1"))

reporting = create_engine({plain_url!r}) if {plain_url!r} else None  # of no app
if reporting is not None:
    with reporting.connect() as conn:
        conn.execute(text("SELECT 1"))
"""


@pytest.fixture
def import_other_app(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., object]]:
    """Imports a module that builds another, unsafe Flask-SQLAlchemy app at import, as a
    test module's ``from billing.wsgi import app`` does; disposes its engines afterwards."""
    name = f"other_app_{os.getpid()}"
    monkeypatch.syspath_prepend(str(tmp_path))
    imported: list[object] = []

    def load(app_url: str, plain_url: str = "") -> object:
        (tmp_path / f"{name}.py").write_text(
            OTHER_APP_MODULE.format(app_url=app_url, plain_url=plain_url)
        )
        module = importlib.import_module(name)
        imported.append(module)
        return module

    yield load
    for module in imported:
        engine_of(module.app).dispose()  # type: ignore[attr-defined]
        if module.reporting is not None:  # type: ignore[attr-defined]
            module.reporting.dispose()  # type: ignore[attr-defined]
    sys.modules.pop(name, None)


def test_another_apps_engine_is_named_with_its_app_and_does_not_fail_this_app(
    build: Callable[..., Built],
    fresh_db: Callable[[], str],
    import_other_app: Callable[..., object],
) -> None:
    other = import_other_app(fresh_db())
    other_url = masked(str(engine_of(other.app).url))  # type: ignore[attr-defined]
    owner = f"app {other.__name__!r} at {other.__name__}.app"  # type: ignore[attr-defined]
    app, _ = build(fix=True)

    check = assert_fork_safe(app)

    assert check.failures == ()
    [foreign] = [e for e in check.engines if e.other_app]
    assert (foreign.name, foreign.other_app, foreign.child) == ("default", owner, "inherited")
    assert str(check).endswith(
        "  not judged: 1 engine(s) of other apps alive in this process would fail"
        " (include_other_apps=True judges them too):\n"
        f"    engine 'default' of {owner} ({other_url})"
    )


def test_include_other_apps_fails_on_another_apps_engine_naming_that_app(
    build: Callable[..., Built],
    fresh_db: Callable[[], str],
    import_other_app: Callable[..., object],
) -> None:
    other = import_other_app(fresh_db())
    owner = f"app {other.__name__!r} at {other.__name__}.app"  # type: ignore[attr-defined]
    app, _ = build(fix=True)

    with pytest.raises(AssertionError) as failed:
        assert_fork_safe(app, include_other_apps=True)

    message = str(failed.value)
    assert message.startswith(
        f"assert_fork_safe: 1 engine(s) not safe to fork:\n  engine 'default', of another {owner} ("
    )
    assert f"    fix: FlaskDBFix(app) on {owner}, or close it" in message


def test_an_engine_of_no_app_is_judged_and_named_by_where_a_module_keeps_it(
    build: Callable[..., Built],
    fresh_db: Callable[[], str],
    import_other_app: Callable[..., object],
) -> None:
    """A plain create_engine() engine belongs to no app: nothing says it is not this app's
    (apps often keep one for reports), so it fails the check, named by its import path."""
    other = import_other_app(fresh_db(), plain_url=fresh_db())
    app, _ = build(fix=True)

    with pytest.raises(AssertionError) as failed:
        assert_fork_safe(app)

    assert str(failed.value).startswith(
        f"assert_fork_safe: 1 engine(s) not safe to fork:\n  engine '{other.__name__}.reporting' ("  # type: ignore[attr-defined]
    )
    assert "fix: flask_uwsgi_dbfix.register(engine), or close it" in str(failed.value)
