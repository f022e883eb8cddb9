"""Engines nobody asked the package to manage, found among the process's live objects.

``FlaskDBFix`` finds an app's Flask-SQLAlchemy engines, and ``register()`` names the others;
an app whose model layer keeps a plain ``create_engine()``/``engine_from_config()`` engine
gets neither by itself. ``flask dbfix check`` and the "covers nothing" warning look for such
engines here: one walk of the heap, only when they are asked to (never at import, never per
connection).
"""

from __future__ import annotations

import gc
import sys
import types
from dataclasses import dataclass

from sqlalchemy.engine import Engine

from .engines import OpenedConnection, is_managed, is_process_local, pool_connections

__all__ = ["UNMANAGED", "UnmanagedEngine", "connected_unmanaged_engines", "import_path"]

UNMANAGED = "unmanaged"
"""The name of an unmanaged engine whose import path could not be found."""

_SKIPPED_MODULES = ("sqlalchemy", "flask_sqlalchemy", "flask_uwsgi_dbfix", "_pytest")


@dataclass(frozen=True)
class UnmanagedEngine:
    """An engine the package does not manage that holds pooled connections."""

    engine: Engine
    name: str
    """Its import path (``myapp.db.engine``) when a module keeps it, else ``unmanaged``."""
    connections: tuple[OpenedConnection, ...]
    import_path: str | None


def connected_unmanaged_engines() -> list[UnmanagedEngine]:
    """Every live :class:`~sqlalchemy.engine.Engine` the package does not manage that holds
    pooled connections, in-memory SQLite aside (a fork copies it safely)."""
    gc.collect()  # engines of apps that are already gone must not count
    found: list[UnmanagedEngine] = []
    seen_pools: set[int] = set()
    # type() is, not isinstance(): an OptionEngine shares its parent's pool.
    live = [obj for obj in gc.get_objects() if type(obj) is Engine]
    for engine in live:
        if id(engine.pool) in seen_pools or is_managed(engine) or is_process_local(engine):
            continue
        seen_pools.add(id(engine.pool))
        opened = tuple(pool_connections(engine))
        if opened:
            path = import_path(engine)
            found.append(UnmanagedEngine(engine, path or UNMANAGED, opened, path))
    if len(found) > 1:  # tell the nameless apart
        found = [
            UnmanagedEngine(u.engine, f"{UNMANAGED}-{n}", u.connections, None)
            if u.import_path is None
            else u
            for n, u in enumerate(found, 1)
        ]
    return found


def import_path(engine: object) -> str | None:
    """Where the app keeps ``engine`` (or any object, such as a Flask app): a module global
    (``myapp.db.engine``) or an attribute of one (``myapp.models.meta.engine``), so a fix
    can name it; ``None`` elsewhere."""
    modules = [
        (name, module)
        for name, module in list(sys.modules.items())
        if isinstance(module, types.ModuleType) and not name.startswith(_SKIPPED_MODULES)
    ]
    holders: list[tuple[str, object]] = []
    for name, module in modules:
        for attr, value in list(vars(module).items()):
            if value is engine:
                return f"{name}.{attr}"
            if not isinstance(value, (type, types.ModuleType, types.FunctionType)):
                holders.append((f"{name}.{attr}", value))
    for path, holder in holders:
        try:  # not getattr(): a proxy's __getattr__ may raise or do anything
            namespace = object.__getattribute__(holder, "__dict__")
        except Exception:
            continue
        if isinstance(namespace, dict):
            for attr, value in list(namespace.items()):
                if value is engine:
                    return f"{path}.{attr}"
    return None
