"""Which engines are ours to fix: every Flask-SQLAlchemy bind of every app, plus ``register()``.

Apps and engines are held weakly: a test suite that builds an app per test must not leak
them through us.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from flask import Flask
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from . import _compat, tracking
from ._compat import ConnectionPoolEntry
from .config import DBFixConfig

DEFAULT_BIND_NAME = "default"


@dataclass(frozen=True)
class ManagedEngine:
    """An engine this package keeps fork-safe, and how to name it to a human."""

    name: str
    """``"default"`` for Flask-SQLAlchemy's default bind, else the bind key or register() name."""
    engine: Engine
    source: str
    """``"flask-sqlalchemy"`` or ``"register"``."""
    prefork_warning: bool = True
    close_before_fork: bool = True
    owner_pid: int = 0
    """The process that set it up (loaded the app): only that one closes it before a fork."""


@dataclass(frozen=True)
class _Registration:
    name: str
    prefork_warning: bool
    close_before_fork: bool
    owner_pid: int


@dataclass(frozen=True)
class _AppEntry:
    config: DBFixConfig
    owner_pid: int


_lock = threading.RLock()
_apps: weakref.WeakKeyDictionary[Flask, _AppEntry] = weakref.WeakKeyDictionary()
_registered: weakref.WeakKeyDictionary[Engine, _Registration] = weakref.WeakKeyDictionary()
_first_connect_listening = False


def flask_sqlalchemy_engines(app: Flask) -> Mapping[str | None, Engine]:
    """Flask-SQLAlchemy's engines for ``app`` by bind key, or ``{}`` if it is not set up (yet)."""
    db: Any = app.extensions.get("sqlalchemy")
    if db is None:
        return {}
    by_app = getattr(db, "_app_engines", None)
    if isinstance(by_app, Mapping):
        # Flask-SQLAlchemy 3.x keeps them here; reading it needs no app context.
        return dict(by_app.get(app, {}))
    if _compat.is_legacy_flask_sqlalchemy(db):  # Flask-SQLAlchemy 2.x
        return _compat.legacy_flask_sqlalchemy_engines(db)
    with app.app_context():
        return dict(db.engines)


def add_app(app: Flask, config: DBFixConfig) -> None:
    """Manage every engine of ``app``, now or as soon as Flask-SQLAlchemy creates them."""
    with _lock:
        entry = _apps[app] = _AppEntry(config, os.getpid())
        _listen_for_first_connect()
    _app_engines(app, entry)


def register(
    engine: Engine,
    *,
    name: str = "registered",
    pid_guard: bool = True,
    prefork_warning: bool = True,
    close_before_fork: bool = True,
) -> Engine:
    """Keep a plain ``create_engine()`` engine fork-safe as well. Returns the engine."""
    if not isinstance(engine, Engine):
        raise TypeError(
            f"register() takes a sqlalchemy.engine.Engine, got {type(engine).__name__}"
            + (" (use its .sync_engine)" if hasattr(engine, "sync_engine") else "")
        )
    with _lock:
        _registered[engine] = _Registration(name, prefork_warning, close_before_fork, os.getpid())
    tracking.track(engine, pid_guard=pid_guard)
    return engine


def _app_engines(app: Flask, entry: _AppEntry) -> list[ManagedEngine]:
    config = entry.config
    managed = []
    engines = flask_sqlalchemy_engines(app)
    # The default bind first, then the others by name: a stable order for humans.
    for key in sorted(engines, key=lambda k: (k is not None, k or "")):
        engine = engines[key]
        # A test suite may have mocked engine creation: leave what is not an Engine alone.
        if isinstance(engine, Engine) and tracking.track(engine, pid_guard=config.pid_guard):
            name = DEFAULT_BIND_NAME if key is None else key
            managed.append(
                ManagedEngine(
                    name,
                    engine,
                    "flask-sqlalchemy",
                    config.prefork_warning,
                    config.close_before_fork,
                    entry.owner_pid,
                )
            )
    return managed


def _registered_engines() -> list[ManagedEngine]:
    with _lock:
        items = list(_registered.items())
    return [
        ManagedEngine(
            reg.name, engine, "register", reg.prefork_warning, reg.close_before_fork, reg.owner_pid
        )
        for engine, reg in items
        if tracking.is_tracked(engine)
    ]


def app_engines(app: Flask) -> list[ManagedEngine]:
    """Every engine managed for ``app`` (all binds), plus the ``register()``-ed ones."""
    with _lock:
        entry = _apps.get(app)
    own = _app_engines(app, entry) if entry is not None else []
    return _unique(own + _registered_engines())


def all_engines() -> list[ManagedEngine]:
    """Every engine managed in this process, each once."""
    with _lock:
        apps = list(_apps.items())
    managed = [m for app, entry in apps for m in _app_engines(app, entry)]
    return _unique(managed + _registered_engines())


def _unique(managed: list[ManagedEngine]) -> list[ManagedEngine]:
    seen: set[int] = set()
    result = []
    for m in managed:
        if id(m.engine) not in seen:
            seen.add(id(m.engine))
            result.append(m)
    return result


def _listen_for_first_connect() -> None:
    """If ``init_app`` ran before ``db.init_app``, the engines appear later; the first
    connection of any pool is our cue to pick them up before the app-creation code that
    opened it is gone from the stack. The ``connect`` event that stamps the connection
    fires right after ``first_connect``, so the new listener still sees it."""
    global _first_connect_listening
    if not _first_connect_listening:
        event.listen(Pool, "first_connect", _on_first_connect)
        _first_connect_listening = True


def _on_first_connect(dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
    with _lock:  # held as briefly as possible: a fork while it is held inherits it locked
        apps = list(_apps.items())
    for app, entry in apps:
        if _has_untracked(app):
            _app_engines(app, entry)


def lock_for_fork(timeout: float = 0.5) -> bool:
    """Take the registry's lock for the before-fork hook, unless another thread holds it
    for longer than ``timeout`` (that thread may be waiting for the fork itself)."""
    return _lock.acquire(timeout=timeout)


def unlock_after_fork() -> None:
    _lock.release()


def reset_locks_in_child() -> None:
    """In a fresh fork, replace the locks: one held by another thread of the parent at fork
    time would never be released here. The child runs one thread at this point."""
    global _lock
    _lock = threading.RLock()


def _has_untracked(app: Flask) -> bool:
    return any(
        isinstance(e, Engine) and not tracking.is_tracked(e)
        for e in flask_sqlalchemy_engines(app).values()
    )
