"""Everything that differs between the stacks we support, and every private internal we touch.

SQLAlchemy 1.4 / 2.x and Flask-SQLAlchemy 2.5 / 3.x differ here and nowhere else, and every
read or write of another library's private attributes (a pool's ``_do_get``, its queue and
locks, a record's pool and ``fairy_ref``) goes through this module: their next release
breaks one file. The type checker sees SQLAlchemy 2.x; the 1.4 branches are runtime code.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool
from sqlalchemy.pool.base import _ConnectionRecord as ConnectionRecord

if TYPE_CHECKING:
    from sqlalchemy.pool import ConnectionPoolEntry
else:
    try:
        from sqlalchemy.pool import ConnectionPoolEntry
    except ImportError:  # SQLAlchemy 1.4: the same object under its private name
        ConnectionPoolEntry = ConnectionRecord

__all__ = [
    "ConnectionPoolEntry",
    "ConnectionRecord",
    "create_flask_sqlalchemy_engines",
    "flask_sqlalchemy_engines",
    "hand_out",
    "holder",
    "idle_records",
    "max_overflow",
    "pool_locks",
    "record_pool",
    "replace_hand_out",
    "require_dispose_close",
    "watch_engine_creation",
]

_HAND_OUT = "_do_get"


# -- SQLAlchemy ---------------------------------------------------------------------------


def require_dispose_close() -> None:
    """Fail early, with what to do, where the fix cannot work: before SQLAlchemy 1.4.33
    ``Engine.dispose()`` has no ``close=False``, and a child that forgets inherited
    connections any other way would close the parent's (FACTS.md)."""
    if "close" not in inspect.signature(Engine.dispose).parameters:
        raise RuntimeError(
            f"flask-uwsgi-dbfix needs SQLAlchemy >= 1.4.33 (for engine.dispose(close=False)); "
            f"this is SQLAlchemy {sqlalchemy.__version__}. Upgrade SQLAlchemy."
        )


def watch_engine_creation(callback: Callable[[Engine], None]) -> Callable[[], None]:
    """Call ``callback`` with every engine ``create_engine()`` makes from now on (including
    ``engine_from_config``, Flask-SQLAlchemy's and an ``AsyncEngine``'s sync engine);
    returns the undo.

    ``create_engine()`` ends with ``dialect_cls.engine_created(engine)``, a no-op classmethod
    of ``Dialect`` that no dialect in SQLAlchemy overrides: wrapping it there is the one
    place every engine passes, at no cost per connection or checkout. Only the
    process-wide mode calls this (the user asked for every engine of the process).
    """
    from sqlalchemy.engine.interfaces import Dialect

    previous = Dialect.__dict__["engine_created"]

    def engine_created(cls: type[Dialect], engine: Engine) -> None:
        try:
            callback(engine)
        finally:
            previous.__func__(cls, engine)

    ours = classmethod(engine_created)
    Dialect.engine_created = ours  # type: ignore[method-assign,assignment]

    def undo() -> None:
        if Dialect.__dict__.get("engine_created") is ours:  # nobody wrapped it after us
            Dialect.engine_created = previous  # type: ignore[method-assign]

    return undo


def hand_out(pool: Pool) -> Callable[[], ConnectionPoolEntry]:
    """The pool's own "give me the next record" step (``_do_get``): the guard wraps it,
    and ``assert_fork_safe`` calls it in its child to see what a worker would get."""
    fn: Callable[[], ConnectionPoolEntry] = getattr(pool, _HAND_OUT)
    return fn


def replace_hand_out(pool: Pool, fn: Callable[[], ConnectionPoolEntry]) -> None:
    """Install ``fn`` as this pool instance's hand-out step."""
    setattr(pool, _HAND_OUT, fn)


def record_pool(record: Any) -> Any:
    """The pool a record belongs to (SQLAlchemy keeps it private, as ``__pool``)."""
    return getattr(record, "_ConnectionRecord__pool", None)


def holder(record: Any) -> Any:
    """The proxy a checked-out record is lent to, or ``None`` when it is idle in the pool."""
    fairy_ref = getattr(record, "fairy_ref", None)
    return fairy_ref() if fairy_ref is not None else None


def idle_records(pool: Pool) -> list[ConnectionPoolEntry]:
    """The records waiting in a ``QueuePool``'s queue (empty for other pools)."""
    return list(getattr(getattr(pool, "_pool", None), "queue", ()))


def pool_locks(pool: Pool) -> tuple[Any, ...] | None:
    """A ``QueuePool``'s two locks (overflow counter, queue), or ``None`` if not found."""
    try:
        return (pool._overflow_lock, pool._pool.mutex)  # type: ignore[attr-defined]
    except AttributeError:
        return None


def max_overflow(pool: Pool) -> int | None:
    value = getattr(pool, "_max_overflow", None)
    return value if isinstance(value, int) else None


def _connect_params(engine: Engine) -> Mapping[str, Any] | None:
    """The keywords ``create_engine()`` passes to the driver's ``connect()`` (from the URL
    and ``connect_args``): the ``cparams`` its ``connect`` closure holds, read without
    connecting; ``None`` when that closure is not there. Holds the password too: callers
    read one key and never print the mapping."""
    creator = getattr(engine.pool, "_creator", None)
    code, cells = getattr(creator, "__code__", None), getattr(creator, "__closure__", None)
    if code is None or cells is None or "cparams" not in code.co_freevars:
        return None
    params = cells[code.co_freevars.index("cparams")].cell_contents
    return params if isinstance(params, Mapping) else None


def psycopg_prepares_statements(engine: Engine) -> bool | None:
    """psycopg 3 prepares a statement once it ran ``prepare_threshold`` times (default 5)
    unless that is ``None``; ``None`` when this is not psycopg 3 or cannot be read."""
    if engine.dialect.driver != "psycopg":
        return None
    params = _connect_params(engine)
    if params is None:
        return None
    return params.get("prepare_threshold", 5) is not None


# -- Flask-SQLAlchemy ---------------------------------------------------------------------


def _is_legacy_flask_sqlalchemy(state: Any) -> bool:
    """Whether ``app.extensions["sqlalchemy"]`` is Flask-SQLAlchemy 2.x's ``_SQLAlchemyState``.
    Read from the instance's own dict: Flask-SQLAlchemy 3.x's ``__getattr__`` answers
    ``db.connectors`` with the ``sqlalchemy.connectors`` module."""
    return isinstance(getattr(state, "__dict__", {}).get("connectors"), dict)


def flask_sqlalchemy_engines(app: Any) -> Mapping[str | None, Engine]:
    """Flask-SQLAlchemy's engines of ``app`` by bind key that exist now, or ``{}`` if it is
    not set up (yet). Creates nothing and needs no app context."""
    db: Any = app.extensions.get("sqlalchemy")
    if db is None:
        return {}
    by_app = getattr(db, "_app_engines", None)
    if isinstance(by_app, Mapping):  # Flask-SQLAlchemy 3.x
        return dict(by_app.get(app, {}))
    if _is_legacy_flask_sqlalchemy(db):
        # Flask-SQLAlchemy 2.x: each bind's _EngineConnector holds its engine once some code
        # asked for it; reading _engine creates none.
        connectors: Mapping[str | None, Any] = db.connectors
        engines = {key: getattr(c, "_engine", None) for key, c in dict(connectors).items()}
        return {key: e for key, e in engines.items() if e is not None}
    with app.app_context():
        return dict(db.engines)


def flask_sqlalchemy_binds(app: Any) -> list[str | None]:
    """The bind keys ``app`` is configured with (``None``: the default bind), or ``[]``
    when Flask-SQLAlchemy is not set up on it."""
    if app.extensions.get("sqlalchemy") is None:
        return []
    return [None, *(app.config.get("SQLALCHEMY_BINDS") or ())]


def create_flask_sqlalchemy_engines(app: Any) -> None:
    """Have Flask-SQLAlchemy 2.x create ``app``'s engines, which it otherwise does on first
    use, so that ``flask dbfix check`` can describe them. Creating an engine opens no
    connection. Flask-SQLAlchemy 3.x creates them in ``init_app``: nothing to do there."""
    state = app.extensions.get("sqlalchemy")
    if not _is_legacy_flask_sqlalchemy(state):
        return
    for bind in flask_sqlalchemy_binds(app):
        state.db.get_engine(app, bind)
