"""A faster pid guard, measured beside the real one (benchmarks/guard_proposal.diff applies
the same idea to flask_uwsgi_dbfix/tracking.py).

Where today's guard spends its time (benchmarks/pid_guard.py prints the parts): about two
thirds of it is ``os.getpid()``, a real system call on every checkout (glibc stopped caching
the pid in 2.25), which costs 250-300 ns on these VMs. The rest is the wrapper call and the
``record.info`` lookup.

The prototype asks the kernel instead: one private anonymous page marked
``MADV_WIPEONFORK`` (Linux >= 4.14) reads as zeros in every child of every ``fork()``, no
matter who forked (uWSGI's C code, a C extension, ``os.fork``) and whether any Python hook
ran. The guard reads one byte of it (~30 ns); while it is non-zero the pid cached in this
process is still right, when it is zero this is a new process: call ``os.getpid()`` once,
re-arm the page. So the comparison is the same pid comparison as today, without the system
call. Where the page cannot be had (not Linux, old kernel), it falls back to ``os.getpid()``
on every checkout: today's cost, today's protection.

A fork *generation counter* bumped by ``os.register_at_fork`` would be as cheap, but uWSGI
runs those hooks only with ``--py-call-osafterfork``; a fork no hook sees would leave the
counter unchanged and the child would reuse the parent's socket. The page has no such gap.
"""

from __future__ import annotations

import mmap
import os
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.pool import ConnectionPoolEntry, Pool

MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)  # Linux value; absent from 3.11's mmap

_PID_KEY = "flask_uwsgi_dbfix.pid"
# Also stamped as an attribute of the record: getattr(record, name, default) costs ~30 ns,
# record.info.get(key, default) ~65 ns (info is a memoized property, then a dict method).
_PID_ATTR = "_flask_uwsgi_dbfix_pid"


class ForkWatch:
    """This process's pid, known without a system call while no fork happened."""

    def __init__(self) -> None:
        self.page: mmap.mmap | None = None
        try:
            page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
            page.madvise(MADV_WIPEONFORK)
        except (AttributeError, OSError, ValueError):  # no madvise / kernel < 4.14 / not Linux
            pass
        else:
            self.page = page
        self.cell = [0]  # a list cell: one indexed load in the hot path
        self.refresh()

    def refresh(self) -> int:
        """Re-read the pid (a system call) and re-arm the page. Pid first, then the page:
        a thread that sees the page armed also sees this process's pid."""
        pid = os.getpid()
        self.cell[0] = pid
        if self.page is not None:
            self.page[0] = 1
        return pid

    def pid(self) -> int:
        if self.page is not None and self.page[0]:
            return self.cell[0]
        return self.refresh()


WATCH = ForkWatch()


def track(engine: Engine) -> None:
    """Stamp every connection with its opening pid and guard the pool's hand-out (as
    tracking.track does), using :data:`WATCH` instead of ``os.getpid()``."""
    started_pid = WATCH.pid()

    def on_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        pid = WATCH.pid()
        record.info[_PID_KEY] = pid  # what the rest of the package reads
        setattr(record, _PID_ATTR, pid)  # what the guard reads
        # A pool first seen here (engine.dispose() made it) holds nothing but, at most, the
        # connection being opened right now, in this process.
        guard(engine.pool, empty=True)

    event.listen(engine, "connect", on_connect)
    guard(engine.pool, started_pid, empty=_holds_nothing(engine.pool))


def _holds_nothing(pool: Pool) -> bool:
    """True only if the pool provably has no connection yet (QueuePool and kin)."""
    checkedin = getattr(pool, "checkedin", None)
    checkedout = getattr(pool, "checkedout", None)
    if not callable(checkedin) or not callable(checkedout):
        return False
    try:
        return bool(checkedin() == 0 and checkedout() == 0)
    except Exception:
        return False


def guard(pool: Pool, started_pid: int | None = None, *, empty: bool = False) -> None:
    """Wrap the pool's hand-out of a record, as tracking's guard does.

    ``empty``: the pool held no connection when guarded, so in the process that guarded it
    (its *home*) every record it hands out was opened there: no record needs checking
    while we are still that process (one page read and one comparison). In any other
    process (a fork, seen by a hook or not) each record's stamp is compared with our pid.
    """
    if getattr(pool, "_dbfix_proto_guarded", False):
        return
    hand_out = pool._do_get
    page, cell, refresh = WATCH.page, WATCH.cell, WATCH.refresh
    started = WATCH.pid() if started_pid is None else started_pid

    if page is not None and empty:
        home = WATCH.pid()

        def guarded_do_get() -> ConnectionPoolEntry:
            record = hand_out()
            pid = cell[0] if page[0] else refresh()
            if pid != home and getattr(record, _PID_ATTR, started) != pid:
                record.dbapi_connection = None  # type: ignore[misc]
            return record

    elif page is None:
        getpid = os.getpid

        def guarded_do_get() -> ConnectionPoolEntry:
            record = hand_out()
            if getattr(record, _PID_ATTR, started) != getpid():
                record.dbapi_connection = None  # type: ignore[misc]
            return record

    else:

        def guarded_do_get() -> ConnectionPoolEntry:
            record = hand_out()
            if getattr(record, _PID_ATTR, started) != (cell[0] if page[0] else refresh()):
                record.dbapi_connection = None  # type: ignore[misc]
            return record

    setattr(pool, "_do_get", guarded_do_get)  # noqa: B010 - an instance-level override
    setattr(pool, "_dbfix_proto_guarded", True)  # noqa: B010
