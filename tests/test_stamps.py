"""Which code opened a connection: the app's own line, the library's as ``via``, whatever the
order of call paths (the walk remembers each path's length and must notice a new one).

SQLite files: this is about the stack at connect time, not about the fork or the wire.
"""

from __future__ import annotations

import os
import sysconfig
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event
from sqlalchemy.pool import NullPool

from flask_uwsgi_dbfix import register, stamps
from flask_uwsgi_dbfix.engines import open_connections

HERE = str(Path(__file__).resolve())

FAKELIB = """
def warm_up(engine):
    with engine.connect() as conn:  # the library's line that connects
        conn.exec_driver_sql("SELECT 1")
"""


def line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(n for n, line in enumerate(lines, 1) if line.endswith(f"# MARK: {marker}"))


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    """NullPool: every connect opens (and stamps) a new connection."""
    engine = create_engine(f"sqlite:///{tmp_path / 'db.sqlite'}", poolclass=NullPool)
    register(engine, name="stamped")
    yield engine
    engine.dispose()


@pytest.fixture
def fakelib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> object:
    """A "library": a module in a directory named site-packages, as installed ones are."""
    lib_dir = tmp_path / "lib" / "site-packages"
    lib_dir.mkdir(parents=True)
    (lib_dir / "fakelib_stamps.py").write_text(textwrap.dedent(FAKELIB))
    monkeypatch.syspath_prepend(str(lib_dir))
    import fakelib_stamps  # type: ignore[import-not-found]

    return fakelib_stamps


def origin_while_open(connect: Callable[[], object], engine: Engine) -> stamps.CodeLocation:
    held = connect()
    try:
        (opened,) = open_connections(engine)
        assert opened.origin is not None
        return opened.origin
    finally:
        held.close()  # type: ignore[attr-defined]


def direct(engine: Engine) -> object:
    return engine.connect()  # MARK: direct


def through_a_helper(engine: Engine) -> object:
    return helper(engine)


def helper(engine: Engine) -> object:
    return engine.connect()  # MARK: helper


def test_each_call_path_names_its_own_line_in_any_order(engine: Engine, fakelib: object) -> None:
    def via_library() -> object:
        fakelib.warm_up(engine)  # type: ignore[attr-defined]  # MARK: via library
        return engine.connect()  # MARK: after the library

    expected = {
        "direct": (HERE, line_of("direct"), "direct", None),
        "helper": (HERE, line_of("helper"), "helper", None),
    }
    calls: dict[str, Callable[[], object]] = {
        "direct": lambda: direct(engine),
        "helper": lambda: through_a_helper(engine),
    }
    seen: list[stamps.CodeLocation] = []

    def record_library_origin(dbapi_connection: object, record: object) -> None:
        location = stamps.origin(record)
        assert location is not None
        seen.append(location)

    stamps._offsets.clear()
    for name in ["direct", "helper", "direct", "direct", "helper", "helper", "direct"]:
        origin = origin_while_open(calls[name], engine)
        assert (origin.filename, origin.lineno, origin.function, origin.via) == expected[name]
        # Between two app paths of the same length, a library's path of another length.
        seen.clear()
        event.listen(engine, "connect", record_library_origin)
        try:
            via_library().close()  # type: ignore[attr-defined]
        finally:
            event.remove(engine, "connect", record_library_origin)
        warm, after = seen
        assert (warm.filename, warm.lineno) == (HERE, line_of("via library"))
        assert warm.via is not None and warm.via.function == "warm_up"
        assert (after.filename, after.lineno) == (HERE, line_of("after the library"))
        assert after.via is None


def test_the_remembered_path_is_checked_at_both_ends(engine: Engine) -> None:
    """A remembered distance that now lands on a library frame, or past the stack's end,
    falls back to the full walk."""
    origin_while_open(lambda: direct(engine), engine)
    assert stamps._offsets, "the direct path was remembered"
    for key in list(stamps._offsets):
        stamps._offsets[key] += 1  # now one frame too far: the app frame's caller
    origin = origin_while_open(lambda: direct(engine), engine)
    assert (origin.lineno, origin.function) == (line_of("direct"), "direct")
    for key in list(stamps._offsets):
        stamps._offsets[key] = 10_000  # beyond the stack
    origin = origin_while_open(lambda: direct(engine), engine)
    assert (origin.lineno, origin.function) == (line_of("direct"), "direct")


def test_an_unrecorded_connection_keeps_no_origin(engine: Engine) -> None:
    conn = engine.connect()
    record = conn.connection._connection_record
    stamps.stamp(record, 1, where=False)
    assert stamps.origin(record) is None
    assert stamps.opener_pid(record, 0) == 1
    conn.close()


def test_a_console_script_is_not_the_apps_code() -> None:
    """``flask`` (or an app's own FlaskGroup command) launched the process: its frame is a
    launcher's, never the line a user is looking for."""
    launcher = os.path.join(sysconfig.get_paths()["scripts"], "flask")
    classifier = stamps._get_classifier()
    assert classifier.classify(launcher) != stamps._APP
    assert classifier.classify(HERE) == stamps._APP
