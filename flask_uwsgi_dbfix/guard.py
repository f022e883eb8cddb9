"""The pid guard: a pool never hands this process a connection another process opened.

It wraps the pool's hand-out of a record, the step before SQLAlchemy looks at the
connection: a record whose connection came from another pid gets its connection dropped
(:func:`~flask_uwsgi_dbfix.child.drop`), and SQLAlchemy connects afresh. Unlike a
``checkout`` event, this runs before ``pool_pre_ping`` and ``pool_recycle`` could ping or
close the parent's socket, and it costs a fraction as much (benchmarks/pid_guard.py). It
catches the forks that no hook saw.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from sqlalchemy.pool import Pool

from . import _compat, forkwatch
from ._compat import ConnectionPoolEntry
from .child import drop, is_empty
from .stamps import PID_ATTR

__all__ = ["install_guard", "is_guarded"]

_UNGUARDED_ATTR = "_flask_uwsgi_dbfix_unguarded"
"""Set on a guarded pool: its own hand-out step, which the guard wraps."""


def is_guarded(pool: object) -> bool:
    return getattr(pool, _UNGUARDED_ATTR, None) is not None


def install_guard(pool: Pool, default_pid: int, *, empty: bool = False) -> None:
    """Make ``pool`` forget, without closing, any connection another process opened.

    The current pid comes from :mod:`~flask_uwsgi_dbfix.forkwatch`, which notices every
    fork, hooked or not, without a system call. A record without a stamp counts as opened
    by ``default_pid``.

    The fast path is the pool's *home*: a process in which the pool held nothing of
    another process's, known by its forkwatch generation (pids are handed out again once
    a process exits), so every record it hands out was opened here and needs no look at
    its stamp. A pool that is empty when guarded has this process as its home; in a new
    process the first hand-out looks once whether the pool is empty, and if so that
    process becomes its home. So a worker's pool that inherited nothing takes the fast
    path without the fork hook doing anything for it. ``empty``: the caller knows the pool
    holds nothing of another process's (a pool made by ``dispose()`` while its first
    connection is being opened). A pool is guarded once.
    """
    if is_guarded(pool):
        return
    hand_out = _compat.hand_out(pool)
    watch = forkwatch.watch()
    page, cell, refresh = watch.page, watch.cell, watch.refresh
    started = default_pid
    guarded_do_get: Callable[[], ConnectionPoolEntry]

    if page is None:  # no fork-wiped page here: ask the kernel on every checkout
        getpid = os.getpid

        def guarded_do_get() -> ConnectionPoolEntry:
            record = hand_out()
            if getattr(record, PID_ATTR, started) != getpid():
                drop(record)
            return record

    else:
        home = watch.generation() if empty or is_empty(pool) else 0
        looked = home  # the generation in which the pool was last looked at

        def guarded_do_get() -> ConnectionPoolEntry:
            nonlocal home, looked
            if not page[0]:
                refresh()
            if cell[1] == home:
                return hand_out()
            if looked != cell[1]:  # this process's first hand-out: is the pool empty?
                looked = cell[1]
                if is_empty(pool):
                    home = looked
                    return hand_out()
            record = hand_out()
            if getattr(record, PID_ATTR, started) != cell[0]:
                drop(record)
            return record

    _compat.replace_hand_out(pool, guarded_do_get)
    setattr(pool, _UNGUARDED_ATTR, hand_out)
