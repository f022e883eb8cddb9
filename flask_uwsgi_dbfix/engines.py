"""The engines this package keeps fork-safe: one :class:`ManagedEngine` per engine.

An engine becomes managed when the user asks: ``register(engine)``, ``FlaskDBFix`` for
every Flask-SQLAlchemy bind of an app, or the process-wide mode for every engine made in
the process (:mod:`~flask_uwsgi_dbfix.process_wide`). Managing it adds a ``connect``
listener on that engine alone (it stamps each new connection,
:mod:`~flask_uwsgi_dbfix.stamps`), adopts the connections its pool holds already, and
installs the pid guard. Nothing else in the
process is touched. Apps and engines are held weakly: a test suite that builds an app per
test must not leak them through us. Reading (:func:`all_engines`, :func:`app_engines`)
changes nothing.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
import weakref
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from . import _compat, forkwatch, stamps
from .config import DBFixConfig
from .guard import install_guard, is_guarded
from .held import is_stand_in
from .locks import renewed_if_held

if TYPE_CHECKING:
    from flask import Flask

__all__ = [
    "DEFAULT_BIND_NAME",
    "PROCESS_WIDE",
    "ManagedEngine",
    "OpenedConnection",
    "add_app",
    "all_engines",
    "app_engines",
    "covers_nothing",
    "is_managed",
    "is_process_local",
    "manage_process_wide",
    "named_binds",
    "open_connections",
    "pool_connections",
    "register",
    "require_engine",
]

DEFAULT_BIND_NAME = "default"
PROCESS_WIDE = "process-wide"
"""The source, and the default name, of an engine managed by the process-wide mode."""


@dataclass(frozen=True)
class OpenedConnection:
    """A live pooled connection of an engine."""

    pid: int
    """Process that opened it."""
    origin: stamps.CodeLocation | None
    """Code that opened it; ``None`` if it was opened before anyone was recording."""
    checked_out: bool
    """Held by a ``Connection``/``Session`` right now rather than idle in the pool."""


class ManagedEngine:
    """An engine this package keeps fork-safe: how to name it, its settings, the process
    that set it up, and the records of the connections it opened."""

    def __init__(
        self,
        engine: Engine,
        name: str,
        source: str,
        config: DBFixConfig,
        owner_pid: int,
        app: Flask | None = None,
    ) -> None:
        key = id(engine)
        # Leaves the registry with its engine; a plain dict rather than a WeakKeyDictionary
        # because a forked child iterates it, and every line of Python it runs there
        # (weakref.py's iteration guard) costs it pages it stops sharing with the master.
        self.engine_ref = weakref.ref(engine, lambda _: _managed.pop(key, None))
        self.name = name
        """``"default"`` for Flask-SQLAlchemy's default bind, else the bind key or the
        ``register()`` name."""
        self.source = source
        """``"flask-sqlalchemy"``, ``"register"`` or ``"process-wide"``."""
        self.config = config
        """The app's settings, or those given to ``register()``."""
        self.owner_pid = owner_pid
        """The process that set it up (loaded the app): only that one closes it before a
        fork, and a record nobody stamped counts as opened there."""
        self._app = weakref.ref(app) if app is not None else None
        self._records: dict[weakref.ref[Any], None] = {}
        """The records of this engine's connections, each leaving with its record: a plain
        dict whose ``pop`` is the weakref callback costs no Python frame per connection
        opened or closed (a WeakSet costs two), and needs no lock."""
        self._watch = forkwatch.watch()

    @property
    def engine(self) -> Engine:
        engine = self.engine_ref()
        if engine is None:  # all_engines() lists live ones only
            raise ReferenceError(f"engine {self.name!r} was garbage collected")
        return engine

    @property
    def app(self) -> Flask | None:
        return self._app() if self._app is not None else None

    @property
    def pid_guard(self) -> bool:
        return self.config.pid_guard

    @property
    def prefork_warning(self) -> bool:
        return self.config.prefork_warning

    @property
    def close_before_fork(self) -> bool:
        return self.config.close_before_fork

    def __repr__(self) -> str:
        return f"<ManagedEngine {self.name!r} ({self.source})>"

    # -- set-up ---------------------------------------------------------------------------

    def start(self, engine: Engine) -> None:
        # Pool listeners on the engine are carried over to the new pool by engine.dispose().
        # (No Engine-level event: any of those puts every Connection on SQLAlchemy's slow
        # path.)
        event.listen(engine, "connect", self._on_connect)
        self._adopt(engine.pool)
        if self.pid_guard:
            self.guard()

    def _on_connect(self, dbapi_connection: Any, record: Any) -> None:
        global _connected
        _connected = True
        # Always: a record that reconnects (after an invalidation, or a drop in a child)
        # carries its previous connection's stamp.
        stamps.stamp(record, self._watch.pid())
        records = self._records
        records[weakref.ref(record, records.pop)] = None
        if self.config.pid_guard and not is_guarded(_compat.record_pool(record)):
            # engine.dispose() made a new pool: it holds nothing but, at most, the
            # connection being opened right now, in this process (any earlier one would
            # have come through here and guarded it), so guarding it now leaves no gap.
            self.guard(empty=True)

    def _adopt(self, pool: Pool) -> None:
        """Take over what ``pool`` holds already; a record nobody stamped was opened by
        the owner (a child that adopts an app's engine late knows it was not itself)."""
        global _connected
        for record in _records_of(pool):
            _connected = True
            if not stamps.is_stamped(record):
                stamps.stamp(record, self.owner_pid, where=False)
            self._records[weakref.ref(record, self._records.pop)] = None

    def guard(self, *, empty: bool = False) -> None:
        """Install the pid guard on the engine's current pool (see :mod:`.guard`)."""
        install_guard(self.engine.pool, self.owner_pid, empty=empty)

    # -- reading --------------------------------------------------------------------------

    def live_records(self) -> list[Any]:
        """Records with a live connection (a held one this child already replaced is not)."""
        # A copy first: a record collected while we iterate would change the dict.
        records = [r() for r in self._records.copy()]
        return [
            r
            for r in records
            if r is not None
            and r.dbapi_connection is not None
            and not is_stand_in(r.dbapi_connection)
        ]

    def open_connections(self) -> list[OpenedConnection]:
        """Live (not closed) pooled connections, idle or checked out."""
        return [_describe(r, self.owner_pid) for r in self.live_records()]

    def close_idle(self) -> list[OpenedConnection]:
        """In the process that opened them: close the idle pooled connections
        (``engine.dispose()``). Returns what was closed; a checked-out connection is left
        alone (nothing can close it under its holder)."""
        if getattr(self.engine.dialect, "is_async", False):
            # An AsyncEngine's connections close only inside its event loop, which a fork
            # hook is not in: they stay open here, and each child drops its copy.
            return []
        pid = os.getpid()
        idle = [c for c in self.open_connections() if not c.checked_out and c.pid == pid]
        if idle:
            self.engine.dispose()
        return idle


def _describe(record: Any, default_pid: int) -> OpenedConnection:
    return OpenedConnection(
        pid=stamps.opener_pid(record, default_pid),
        origin=stamps.origin(record),
        checked_out=_compat.holder(record) is not None,
    )


def _records_of(pool: Pool) -> list[Any]:
    """Every live record of ``pool``: those :func:`stamps.record_every_pool` saw, the idle
    ones in its queue and, when the pool lends out more than those, the rest found among
    live objects."""
    found = {id(r): r for r in stamps.recorded_records() if _compat.record_pool(r) is pool}
    for record in _compat.idle_records(pool):
        found.setdefault(id(record), record)
    checkedout = getattr(pool, "checkedout", None)
    if callable(checkedout):
        for fresh in (False, True):  # the last walk's findings first, a new walk if short
            if checkedout() <= sum(_compat.holder(r) is not None for r in found.values()):
                break
            for record in _walked_records(pool, fresh):
                found.setdefault(id(record), record)
    return [r for r in found.values() if r.dbapi_connection is not None]


_walked: weakref.WeakKeyDictionary[Pool, list[weakref.ref[Any]]] = weakref.WeakKeyDictionary()
"""Every pool's records, as the last walk of the heap found them: one walk serves every
engine adopted after it (50 engines in a heap of millions of objects cost one walk, not 50)."""


def _walked_records(pool: Pool, fresh: bool) -> list[Any]:
    """``pool``'s records found among live objects: from the last walk, or (``fresh``) a
    new one, which records every pool's."""
    if fresh:
        _walked.clear()
        for obj in gc.get_objects():
            if isinstance(obj, _compat.ConnectionRecord):
                owner = _compat.record_pool(obj)
                if owner is not None:
                    _walked.setdefault(owner, []).append(weakref.ref(obj))
    records = (ref() for ref in _walked.get(pool, ()))
    return [r for r in records if r is not None]


def pool_connections(engine: Engine) -> list[OpenedConnection]:
    """The live pooled connections of an engine the package does not manage, with where
    each was opened when something recorded it."""
    return [_describe(r, os.getpid()) for r in _records_of(engine.pool)]


def is_process_local(engine: Engine) -> bool:
    """True for in-memory SQLite: its connections live in process memory, so a fork copies
    them safely, and replacing them would silently give the child an empty database."""
    url = engine.url
    if url.get_backend_name() != "sqlite":
        return False
    database = url.database or ""
    return database in ("", ":memory:") or url.query.get("mode") == "memory"


# -- the registry ------------------------------------------------------------------------

_lock = threading.RLock()
_managed: dict[int, ManagedEngine] = {}
"""By ``id(engine)``; an entry leaves with its engine (see :class:`ManagedEngine`)."""
_apps: weakref.WeakKeyDictionary[Flask, int] = weakref.WeakKeyDictionary()
"""Apps with ``FlaskDBFix``, and the process that set each up."""
_pending = False
"""A ``first_connect`` listener on every pool is in place: some app's engines do not exist
yet (``FlaskDBFix`` before ``db.init_app``)."""
_pending_done = False
"""No app is pending any more; the listener goes at the next safe point."""
_connected = False
"""A managed engine has held a connection in this process or an ancestor of it. Until
then a forked child has nothing to forget, and does next to nothing: every object it
touches is a page it stops sharing with the master."""


def anything_connected() -> bool:
    return _connected


def is_pending() -> bool:
    """Some app's Flask-SQLAlchemy engines may still appear (see :func:`adopt_app_engines`)."""
    return _pending


def _manage(
    engine: Engine, name: str, source: str, config: DBFixConfig, owner_pid: int, app: Any = None
) -> ManagedEngine | None:
    if is_process_local(engine):
        return None
    with _lock:
        existing = _lookup(engine)
        if existing is not None:
            if existing.source == PROCESS_WIDE and source != PROCESS_WIDE:
                # The process-wide mode got there first; what the user named explicitly
                # names it and sets it up from now on (its listener and guard stay).
                existing.name, existing.source, existing.config = name, source, config
                existing._app = weakref.ref(app) if app is not None else None
            return existing
        managed = ManagedEngine(engine, name, source, config, owner_pid, app)
        _managed[id(engine)] = managed
    managed.start(engine)
    return managed


def require_engine(engine: object) -> None:
    """``register()``'s argument check, with what to pass instead."""
    if not isinstance(engine, Engine):
        raise TypeError(
            f"register() takes a sqlalchemy.engine.Engine, got {type(engine).__name__}"
            + (" (use its .sync_engine)" if hasattr(engine, "sync_engine") else "")
        )


def register(engine: Engine, name: str, config: DBFixConfig) -> ManagedEngine | None:
    """Manage a plain ``create_engine()`` engine; ``None`` for one we leave alone."""
    require_engine(engine)
    _settle_pending()
    return _manage(engine, name, "register", config, os.getpid())


def manage_process_wide(engine: Engine) -> ManagedEngine | None:
    """Manage an engine the process-wide mode found, with the default settings, named by
    its ``logging_name`` if it has one, else by the app's line that made it."""
    if not isinstance(engine, Engine):
        return None
    name = getattr(engine, "logging_name", None) or _made_at(stamps.caller_location())
    return _manage(engine, str(name), PROCESS_WIDE, DBFixConfig(), os.getpid())


def _made_at(where: stamps.CodeLocation | None) -> str:
    """``package/module.py:12``: short, and tells two engines apart."""
    if where is None:
        return PROCESS_WIDE
    return f"{stamps.short_path(where.filename)}:{where.lineno}"


def add_app(app: Flask) -> None:
    """Manage every engine of ``app``, now or as soon as Flask-SQLAlchemy creates them,
    with the settings in its ``app.extensions["dbfix"]``."""
    with _lock:
        _apps[app] = os.getpid()
    _settle_pending()
    # Flask-SQLAlchemy 2.x makes an app's engines on first use: make them now (that opens no
    # connection), so they are managed from the start and no listener on every pool has to
    # wait for them. (An engine 2.x makes again later, after its URI was changed, is not.)
    _compat.create_flask_sqlalchemy_engines(app)
    adopt_app_engines()


def named_binds(engines: Mapping[str | None, Engine]) -> list[tuple[str, Engine]]:
    """Flask-SQLAlchemy's engines by bind key, named as every output names them: the
    default bind first (``"default"``), then the others by key, a stable order for humans."""
    keys = sorted(engines, key=lambda k: (k is not None, k or ""))
    return [(DEFAULT_BIND_NAME if key is None else key, engines[key]) for key in keys]


def adopt_app_engines() -> None:
    """Manage the engines that the apps' Flask-SQLAlchemy made since we last looked, and
    keep the ``first_connect`` listener only while some app may still make more."""
    global _pending, _pending_done
    with _lock:  # held briefly: a fork while it is held inherits it locked
        apps = list(_apps.items())
    pending = False
    for app, owner_pid in apps:
        config = getattr(app.extensions.get("dbfix"), "config", None)
        if not isinstance(config, DBFixConfig):
            continue
        engines = _compat.flask_sqlalchemy_engines(app)
        for name, engine in named_binds(engines):
            # A test suite may have mocked engine creation: leave what is not an Engine.
            if isinstance(engine, Engine):
                _manage(engine, name, "flask-sqlalchemy", config, owner_pid, app)
        binds = _compat.flask_sqlalchemy_binds(app)
        # Flask-SQLAlchemy imported but not set up on the app yet, or a bind not made yet.
        missing = not binds if "flask_sqlalchemy" in sys.modules else False
        pending = pending or missing or any(b not in engines for b in binds)
    if pending and not _pending:
        _pending = True
        event.listen(Pool, "first_connect", _on_first_connect)
    _pending_done = not pending


def _on_first_connect(dbapi_connection: Any, record: Any) -> None:
    """The first connection of a new pool: if it is an app's engine, manage it before the
    code that opened it is gone from the stack. The engine's own ``connect`` listener,
    added here, still sees this connection: ``connect`` fires right after."""
    adopt_app_engines()


def _settle_pending() -> None:
    """Remove the ``first_connect`` listener once no app needs it. Called where no pool
    event is being dispatched (removing a listener during its dispatch is not safe)."""
    global _pending, _pending_done
    with _lock:
        if not (_pending and _pending_done):
            return
        _pending = _pending_done = False
    event.remove(Pool, "first_connect", _on_first_connect)


def is_managed(engine: Engine) -> bool:
    return _lookup(engine) is not None


def _lookup(engine: Engine) -> ManagedEngine | None:
    managed = _managed.get(id(engine))
    return managed if managed is not None and managed.engine_ref() is engine else None


def open_connections(engine: Engine) -> list[OpenedConnection]:
    """A managed engine's live pooled connections; ``[]`` for an engine not managed."""
    managed = _lookup(engine)
    return managed.open_connections() if managed is not None else []


class LiveEngines(list[ManagedEngine]):
    """Managed engines that were alive when listed, kept alive while the list is: an engine
    left in a garbage cycle could otherwise be collected between that check and its use
    (``ManagedEngine.engine`` would raise ``ReferenceError``)."""

    def __init__(self, managed: Iterable[ManagedEngine], pinned: Iterable[Engine]) -> None:
        super().__init__(managed)
        self.pinned = tuple(pinned)


def all_engines() -> LiveEngines:
    """Every live engine managed in this process, in the order they were managed."""
    with _lock:
        entries = list(_managed.values())
    alive = [(m, m.engine_ref()) for m in entries]
    return LiveEngines(
        (m for m, e in alive if e is not None), (e for _, e in alive if e is not None)
    )


def app_engines(app: Flask) -> LiveEngines:
    """Every engine managed for ``app`` (all binds, default first), plus the
    ``register()``-ed ones and those of the process-wide mode."""
    managed = all_engines()
    own = [m for m in managed if m.app is app]
    own.sort(key=lambda m: (m.name != DEFAULT_BIND_NAME, m.name))
    shared = [m for m in managed if m.app is None and m.source != "flask-sqlalchemy"]
    return LiveEngines(own + shared, managed.pinned)


def covers_nothing() -> bool:
    """``FlaskDBFix`` is on for some app of this process, yet it manages no live engine:
    the app keeps its engines itself (``create_engine()``), or has none."""
    with _lock:
        if not _apps:
            return False
    if is_pending():
        adopt_app_engines()
    return not all_engines()


def owner_of(app: Flask) -> int | None:
    """The process that ran ``FlaskDBFix`` on ``app``, or ``None`` if none did."""
    with _lock:
        return _apps.get(app)


def lock_for_fork(timeout: float = 0.5) -> bool:
    """Take the registry's lock for the before-fork hook, unless another thread holds it
    for longer than ``timeout`` (that thread may be waiting for the fork itself)."""
    return _lock.acquire(timeout=timeout)


def unlock_after_fork() -> None:
    _lock.release()


def managed_in_child() -> Iterable[ManagedEngine]:
    """The registry itself, neither copied nor locked: for a forked child, whose only
    thread runs the fork hook (an entry whose engine is gone may be in it)."""
    return _managed.values()


def reset_locks_in_child() -> None:
    """In a fresh fork, replace our locks that another thread of the parent held at fork
    time: they would never be released here. The child runs one thread at this point."""
    global _lock
    _lock = renewed_if_held(_lock, threading.RLock)
    stamps.reset_locks_in_child()
