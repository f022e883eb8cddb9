"""In a forked child: forget every connection the parent opened, without any I/O on it.

Never close, ping or write to an inherited connection: that is the parent's socket
(FACTS.md). Idle ones go with the old pool (``engine.dispose(close=False)``); ones that
were checked out at fork time get a stand-in (:mod:`~flask_uwsgi_dbfix.held`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from sqlalchemy.pool import Pool, QueuePool

from . import _compat, stamps
from .held import replace_held

if TYPE_CHECKING:
    from .engines import ManagedEngine

__all__ = ["drop", "forget_inherited", "is_empty", "settle_untouched"]

_forgotten: list[Any] = []
"""DBAPI connections this process dropped on purpose. Kept referenced, never collected:
their finalizers would warn (sqlite3 on Python 3.13, psycopg 3: ``ResourceWarning``) about
a connection that is not this process's to close. Bounded by the pools' sizes."""


def keep_forgotten(dbapi_connection: Any) -> None:
    if dbapi_connection is not None:
        _forgotten.append(dbapi_connection)


def drop(record: Any) -> None:
    """Forget another process's connection; SQLAlchemy then connects afresh."""
    keep_forgotten(record.dbapi_connection)
    record.dbapi_connection = None


def forget_inherited(managed: ManagedEngine, pid: int) -> None:
    """Drop every connection of ``managed``'s engine that a process other than ``pid``
    opened. A pool that never held a connection is kept as it is: nothing to drop, and
    building a new pool in every worker writes to pages it would otherwise share with the
    master (about 1.6 MiB per worker, docs/benchmarks.md)."""
    engine = managed.engine
    for record in managed.live_records():
        if stamps.opener_pid(record, managed.owner_pid) == pid:
            continue
        holder = _compat.holder(record)
        if holder is not None:
            keep_forgotten(record.dbapi_connection)
            replace_held(engine, record, holder, stamps.origin(record))
        else:
            drop(record)
    keep_pool(managed)


def keep_pool(managed: ManagedEngine) -> None:
    """Keep the engine's pool if it holds nothing (its guard makes this process its home
    on the first hand-out), else replace it with a new one (``dispose(close=False)``)."""
    if not _never_connected(managed.engine.pool):
        managed.engine.dispose(close=False)


def settle_untouched(managed: Iterable[ManagedEngine]) -> None:
    """In a child of a process where no managed engine ever connected: nothing to forget,
    and the guards find out on their own that this is a new process. Only a lock another
    thread held at fork time needs mending: ours (the caller's job), and a pool's, if a
    parent thread was inside its first checkout. Kept to the bare minimum: every object a
    worker touches is a page it stops sharing with the master."""
    for m in managed:
        engine = m.engine_ref()
        locks = _compat.pool_locks(engine.pool) if engine is not None else None
        if engine is not None and locks is not None and not _free(locks):
            engine.dispose(close=False)


def is_empty(pool: Pool) -> bool:
    """True only if ``pool`` provably holds no connection, idle or lent out (QueuePool and
    kin); False when it does, or when it cannot tell."""
    checkedin = getattr(pool, "checkedin", None)
    checkedout = getattr(pool, "checkedout", None)
    if not callable(checkedin) or not callable(checkedout):
        return False
    try:
        return bool(checkedin() == 0 and checkedout() == 0)
    except Exception:
        return False


def _free(locks: tuple[Any, ...]) -> bool:
    """No other thread holds any of ``locks`` (in a child: none was held at fork time)."""
    for lock in locks:
        if not lock.acquire(blocking=False):
            return False
        lock.release()
    return True


def _never_connected(pool: Pool) -> bool:
    """True if ``pool`` can be kept as the parent left it: a plain ``QueuePool`` holding no
    connection, none being opened, and none of its locks held by a parent thread at fork
    time (they would stay locked here for good)."""
    if type(pool) is not QueuePool:
        return False  # other pools keep connections elsewhere (per thread, one static)
    locks = _compat.pool_locks(pool)
    return locks is not None and _free(locks) and is_empty(pool)
