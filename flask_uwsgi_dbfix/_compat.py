"""What differs between the stacks we support: SQLAlchemy 1.4 / 2.x, Flask-SQLAlchemy 2.5 / 3.x.

Everything version-specific lives here, so the rest of the package reads as if there were
one version. The type checker sees SQLAlchemy 2.x; the 1.4 branches are plain runtime code.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry
else:
    try:
        from sqlalchemy.pool import ConnectionPoolEntry
    except ImportError:  # SQLAlchemy 1.4: the same object under its private name
        from sqlalchemy.pool.base import _ConnectionRecord as ConnectionPoolEntry

__all__ = [
    "ConnectionPoolEntry",
    "create_flask_sqlalchemy_engines",
    "is_legacy_flask_sqlalchemy",
    "legacy_flask_sqlalchemy_engines",
    "require_dispose_close",
]


def require_dispose_close() -> None:
    """Fail early, with what to do, where the fix cannot work: before SQLAlchemy 1.4.33
    ``Engine.dispose()`` has no ``close=False``, and a child that forgets inherited
    connections any other way would close the parent's (FACTS.md)."""
    if "close" not in inspect.signature(Engine.dispose).parameters:
        raise RuntimeError(
            f"flask-uwsgi-dbfix needs SQLAlchemy >= 1.4.33 (for engine.dispose(close=False)); "
            f"this is SQLAlchemy {sqlalchemy.__version__}. Upgrade SQLAlchemy."
        )


def is_legacy_flask_sqlalchemy(state: Any) -> bool:
    """Whether ``app.extensions["sqlalchemy"]`` is Flask-SQLAlchemy 2.x's ``_SQLAlchemyState``.
    Read from the instance's own dict: Flask-SQLAlchemy 3.x's ``__getattr__`` answers
    ``db.connectors`` with the ``sqlalchemy.connectors`` module."""
    return isinstance(getattr(state, "__dict__", {}).get("connectors"), dict)


def legacy_flask_sqlalchemy_engines(state: Any) -> Mapping[str | None, Engine]:
    """Flask-SQLAlchemy 2.x's engines by bind key, from ``app.extensions["sqlalchemy"]``
    (a ``_SQLAlchemyState``): each bind's ``_EngineConnector`` holds its engine once some
    code asked for it. Reading ``_engine`` creates none; engines made later are picked up
    by the registry's ``first_connect`` listener before their first connection is used."""
    connectors: Mapping[str | None, Any] = state.connectors
    engines = {key: getattr(c, "_engine", None) for key, c in dict(connectors).items()}
    return {key: e for key, e in engines.items() if e is not None}


def create_flask_sqlalchemy_engines(app: Any) -> None:
    """Have Flask-SQLAlchemy 2.x create ``app``'s engines, which it otherwise does on first
    use, so that ``flask dbfix check`` can describe them. Creating an engine opens no
    connection. Flask-SQLAlchemy 3.x creates them in ``init_app``: nothing to do there."""
    state = app.extensions.get("sqlalchemy")
    if not is_legacy_flask_sqlalchemy(state):
        return
    for bind in [None, *(app.config.get("SQLALCHEMY_BINDS") or ())]:
        state.db.get_engine(app, bind)
