"""What differs between the stacks we support: SQLAlchemy 1.4 / 2.x, Flask-SQLAlchemy 2.5 / 3.x.

Everything version-specific lives here, so the rest of the package reads as if there were
one version. The type checker sees SQLAlchemy 2.x; the 1.4 branches are plain runtime code.
"""

from __future__ import annotations

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

__all__ = ["ConnectionPoolEntry", "legacy_flask_sqlalchemy_engines"]

SQLALCHEMY_1 = sqlalchemy.__version__.startswith("1.")


def legacy_flask_sqlalchemy_engines(state: Any) -> Mapping[str | None, Engine]:
    """Flask-SQLAlchemy 2.x's engines by bind key, from ``app.extensions["sqlalchemy"]``
    (a ``_SQLAlchemyState``): each bind's ``_EngineConnector`` holds its engine once some
    code asked for it. Reading ``_engine`` creates none; engines made later are picked up
    by the registry's ``first_connect`` listener before their first connection is used."""
    connectors: Mapping[str | None, Any] = state.connectors
    engines = {key: getattr(c, "_engine", None) for key, c in dict(connectors).items()}
    return {key: e for key, e in engines.items() if e is not None}
