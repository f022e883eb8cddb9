"""The fork-wiped page the pid guard reads instead of calling os.getpid().

The guard against the real PostgreSQL is in test_fork_inprocess.py; here, what the page
and its generation promise, with real forks (os.fork and a raw libc fork) and, for the
cases a test cannot bring about (pid reuse, an emulator's madvise), stand-ins.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from flask_uwsgi_dbfix import forkwatch, stamps
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture
from tests.test_fork_inprocess import guard_only, in_child, raw_fork

needs_page = pytest.mark.skipif(
    forkwatch.watch().page is None, reason="no MADV_WIPEONFORK on this kernel"
)


@needs_page
@pytest.mark.parametrize("fork", [os.fork, raw_fork], ids=["os.fork", "raw_fork"])
def test_a_child_sees_the_page_wiped_and_learns_its_own_pid(fork: Callable[[], int]) -> None:
    watch = forkwatch.watch()
    parent_generation = watch.generation()
    assert watch.pid() == os.getpid()

    def child() -> dict[str, Any]:
        assert watch.page is not None
        wiped = watch.page[0] == 0
        return {
            "wiped": wiped,
            "pid_right": watch.pid() == os.getpid(),
            "generation": watch.generation(),
            "armed_again": watch.page[0] == 1,
        }

    seen = in_child(child, fork)
    # After os.fork the package's own at-fork hook may have read the watch (and re-armed the
    # page) before this code ran; after a raw fork nothing ran before it.
    assert seen["wiped"] or fork is os.fork, seen
    assert seen["pid_right"] and seen["armed_again"], seen
    assert seen["generation"] > parent_generation, seen
    assert watch.generation() == parent_generation  # the parent's page is untouched


class _Madvise:
    """A stand-in page whose madvise accepts only the advice in ``accepts``."""

    def __init__(self, accepts: set[int]) -> None:
        self.accepts = accepts

    def madvise(self, advice: int) -> None:
        if advice not in self.accepts:
            raise OSError(22, "Invalid argument")


def test_a_madvise_that_accepts_anything_is_not_trusted() -> None:
    class AnythingGoes:
        def madvise(self, advice: int) -> None:
            pass

    assert forkwatch.wipes_on_fork(AnythingGoes()) is False


def test_a_kernel_without_wipeonfork_falls_back() -> None:
    assert forkwatch.wipes_on_fork(_Madvise(accepts=set())) is False
    assert forkwatch.wipes_on_fork(_Madvise(accepts={forkwatch._MADV_WIPEONFORK})) is True


@pytest.fixture
def sqlite_engine() -> Iterator[Engine]:
    with tempfile.TemporaryDirectory() as tmp:
        # QueuePool named: SQLAlchemy 1.4 gives a SQLite file NullPool.
        engine = create_engine(
            f"sqlite:///{tmp}/t.db", poolclass=QueuePool, pool_size=1, max_overflow=0
        )
        yield engine
        engine.dispose()


@needs_page
def test_a_new_process_given_the_home_pid_again_still_checks_the_stamp(
    sqlite_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Pid reuse: the process that guarded an empty pool exits; a descendant that opened
    its own connection forks a process the kernel gives the first one's pid. That process
    must not take the pool for its home and hand out its parent's connection."""
    guard_only(sqlite_engine)  # an empty pool: this process is home
    home_pid = os.getpid()
    with sqlite_engine.connect() as conn:
        record = conn.connection._connection_record
    assert record is not None
    setattr(record, stamps.PID_ATTR, home_pid + 1)  # opened by a descendant
    page = forkwatch.watch().page
    assert page is not None
    page[0] = 0  # a fork happened ...
    monkeypatch.setattr(os, "getpid", lambda: home_pid)  # ... into the home pid, reused
    with sqlite_engine.connect() as conn:
        again = conn.connection._connection_record
    assert again is record
    assert getattr(again, stamps.PID_ATTR) == home_pid  # dropped and reconnected here


def test_the_fallback_is_said_at_start_up_and_by_the_check(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """Where the page is not available the guard is correct but slower: an INFO line and
    the check's pid-guard-fallback note say so; with the page, neither appears."""
    from flask import Flask
    from sqlalchemy import create_engine

    from flask_uwsgi_dbfix import register
    from flask_uwsgi_dbfix.check import build_report

    engine = register(create_engine(f"sqlite:///{tmp_path / 'f.db'}"), name="fallback")
    app = Flask(__name__)
    codes = {f.code for f in build_report(app, default_ini=str(tmp_path / "no.ini")).findings}
    assert "pid-guard-fallback" not in codes  # this kernel has the page
    monkeypatch.setattr(forkwatch, "_watch", None)
    monkeypatch.setattr(forkwatch, "_wipe_on_fork_page", lambda: None)
    with caplog.at_level(logging.INFO, logger="flask_uwsgi_dbfix"):
        assert forkwatch.watch().page is None
    assert [r.getMessage() for r in caplog.records] == [
        f"flask-uwsgi-dbfix: {forkwatch.FALLBACK_NOTE}"
    ]
    report = build_report(app, default_ini=str(tmp_path / "no.ini"))
    (note,) = [f for f in report.findings if f.code == "pid-guard-fallback"]
    assert note.severity == "note" and "os.getpid()" in note.message
    engine.dispose()
