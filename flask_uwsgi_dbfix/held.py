"""A Connection or Session held across a fork: a clear error in the child, then recovery.

The child must never use the parent's socket, but the ``Connection`` (or the Session
holding it) still points at it. Its DBAPI connection is replaced by a stand-in that
raises, on first use, the driver's own ``OperationalError`` kind with a message that
says what happened and where. SQLAlchemy sees a disconnect (the stand-in reports itself
``closed``/``broken``, and a ``handle_error`` listener says so for any dialect), so it
invalidates the connection; after the rollback the same Session connects afresh.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext

    from .stamps import CodeLocation

_LISTENING_ATTR = "_flask_uwsgi_dbfix_held_listener"


class HeldAcrossForkError(Exception):
    """Mixed into the driver's ``OperationalError`` for a connection held across a fork."""


@functools.lru_cache(maxsize=16)
def _error_class(operational_error: type[Exception]) -> type[Exception]:
    """The driver's ``OperationalError`` plus our marker: ``isinstance`` checks of the
    dialect (``dbapi.Error``) and of users (``HeldAcrossForkError``) both hold."""
    return type("ConnectionHeldAcrossFork", (operational_error, HeldAcrossForkError), {})


def message(origin: CodeLocation | None) -> str:
    where = str(origin) if origin is not None else "an unknown place"
    return (
        f"this connection was in use when the process forked (opened at {where}); "
        "close the Session/Connection before the fork"
    )


class _ForkedConnection:
    """Stands in for a DBAPI connection this process inherited while it was checked out.

    Ending it (``close``, ``rollback``) is a no-op: the child never owned that
    transaction, and SQLAlchemy's clean-up must not fail. Anything else raises.
    """

    closed = True  # what psycopg2's and psycopg's is_disconnect() look at
    broken = True

    def __init__(self, error_class: type[Exception], text: str) -> None:
        self._error_class = error_class
        self._text = text

    def close(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        raise self._error_class(self._text)

    def __repr__(self) -> str:
        return "<connection held across a fork: unusable in this process>"


def is_stand_in(dbapi_connection: Any) -> bool:
    """True for what :func:`replace_held` put in place: already forgotten."""
    return isinstance(dbapi_connection, _ForkedConnection)


def replace_held(engine: Engine, record: Any, holder: Any, origin: CodeLocation | None) -> None:
    """Swap the stand-in into the checked-out ``record`` and its proxy ``holder``."""
    dbapi = getattr(engine.dialect, "loaded_dbapi", None) or engine.dialect.dbapi
    base = getattr(dbapi, "OperationalError", None)
    if not (isinstance(base, type) and issubclass(base, Exception)):
        base = Exception
    stand_in = _ForkedConnection(_error_class(base), message(origin))
    holder.dbapi_connection = stand_in
    record.dbapi_connection = stand_in
    if not getattr(engine, _LISTENING_ATTR, False):
        setattr(engine, _LISTENING_ATTR, True)
        event.listen(engine, "handle_error", _treat_as_disconnect)


def _treat_as_disconnect(context: ExceptionContext) -> None:
    if isinstance(context.original_exception, HeldAcrossForkError):
        context.is_disconnect = True
        # The pool in use now is the child's own, made after the fork: leave it valid.
        context.invalidate_pool_on_disconnect = False
