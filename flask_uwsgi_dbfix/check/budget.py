"""The connection budget: how many database connections one deployment can hold at once.

The fix gives every worker connections of its own, as it should; the next limit is the
database server's ``max_connections``. The most one app server instance can hold on a
database server is, for every engine pointing at it (all its databases share the server's
``max_connections``, so binds to any database on one server count together)::

    workers x min(threads, the engine's pool capacity)
  + (mules + spooler processes) x min(1, capacity)       each runs one thing at a time
  + what the master itself keeps open after forking

where capacity is ``pool_size + max_overflow`` for a ``QueuePool`` (a pool only grows
when that many threads want a connection at once), one per thread for ``NullPool`` and
``SingletonThreadPool``, and one for ``StaticPool``. ``cheaper`` changes nothing: its
``processes`` is the most it forks. The total is that times ``--instances``.

Nothing here connects, except :func:`server_limits`, which runs only when the user asks
(``--db-max-connections-from-server``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from sqlalchemy import text
from sqlalchemy.engine import Engine, make_url

from ..masking import mask_passwords, masked_url
from .report import BudgetOptions, DatabaseBudget, EngineReport, PreforkConnection, plural
from .uwsgi_ini import UwsgiSettings

WARN_SHARE = 0.8
"""Above this share of the server's limit the check warns: reconnects after a restart,
a deploy that briefly runs old and new workers, and psql sessions need the rest."""

_PER_THREAD_POOLS = {"NullPool", "SingletonThreadPool"}
_ONE_CONNECTION_POOLS = {"StaticPool"}


def server_key(url: str) -> str | None:
    """``host:port`` of a database server; ``None`` for SQLite and the like."""
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() == "sqlite" or not parsed.host:
        return None
    port = parsed.port if parsed.port is not None else _default_port(parsed.get_backend_name())
    return f"{parsed.host}:{port}"


def _database(url: str) -> str:
    try:
        return make_url(url).database or ""
    except Exception:
        return ""


def _default_port(backend: str) -> int | str:
    return {"postgresql": 5432, "mysql": 3306, "mariadb": 3306}.get(backend, "default")


def peak(engine: EngineReport, threads: int) -> int:
    """The most connections one process with ``threads`` threads holds on ``engine``."""
    if engine.pool_class in _ONE_CONNECTION_POOLS:
        return 1
    if engine.pool_class in _PER_THREAD_POOLS or engine.pool_size is None:
        return threads
    capacity = engine.pool_size + max(engine.max_overflow or 0, 0)
    return min(threads, capacity) if capacity > 0 else threads


def compute(
    engines: Iterable[EngineReport],
    prefork: tuple[PreforkConnection, ...],
    settings: UwsgiSettings | None,
    options: BudgetOptions,
    limits: dict[str, int] | None = None,
) -> tuple[DatabaseBudget, ...]:
    """One :class:`DatabaseBudget` per database server the engines point at."""
    threads = max((settings.threads if settings else None) or 1, 1)
    workers = max((settings.processes if settings else None) or 1, 1)
    single = (settings.mules + settings.spooler_processes) if settings else 0
    lazy = bool(settings and settings.lazy_apps)
    master_closes = bool(settings and settings.py_call_uwsgi_fork_hooks)
    by_database: dict[str, list[EngineReport]] = {}
    for engine in engines:
        key = server_key(engine.url)
        if key is not None:
            by_database.setdefault(key, []).append(engine)
    found = []
    for key, group in by_database.items():
        per_worker = sum(peak(e, threads) for e in group)
        per_single = sum(min(1, peak(e, 1)) for e in group)
        names = {(e.name, e.url) for e in group}
        master = 0
        if not lazy:  # with lazy-apps the master never loads the app
            master = sum(
                1
                for c in prefork
                if (c.engine, c.url) in names and (c.checked_out or not master_closes)
            )
        per_instance = workers * per_worker + single * per_single + master
        limit, source = options.db_max_connections, "--db-max-connections"
        if limits and key in limits:
            limit, source = limits[key], "server"
        sum_text = _arithmetic(group, threads, workers, single, per_single, master)
        found.append(
            DatabaseBudget(
                server=key,
                databases=tuple(dict.fromkeys(_database(e.url) for e in group)),
                engines=tuple(e.name for e in group),
                per_worker=per_worker,
                workers=workers,
                single_threaded=single,
                per_single_threaded=per_single,
                master=master,
                per_instance=per_instance,
                instances=options.instances,
                total=per_instance * options.instances,
                limit=limit,
                limit_source=source if limit is not None else None,
                arithmetic=sum_text,
            )
        )
    return tuple(found)


def _arithmetic(
    group: list[EngineReport],
    threads: int,
    workers: int,
    single: int,
    per_single: int,
    master: int,
) -> str:
    """``4 workers x (3 threads on 'default' (pool 5 + 10) + ...)`` and the rest."""
    parts = []
    for engine in group:
        held = peak(engine, threads)
        if engine.pool_class in _ONE_CONNECTION_POOLS:
            why = engine.pool_class
        elif engine.pool_class in _PER_THREAD_POOLS or engine.pool_size is None:
            why = f"{engine.pool_class}: one per thread"
        else:
            why = f"{threads} threads, pool {engine.pool_size} + {engine.max_overflow or 0}"
        parts.append(f"{held} on '{engine.name}' ({why})")
    text_ = f"{plural(workers, 'worker')} x ({' + '.join(parts)})"
    if single:
        text_ += f" + {single} mule/spooler process(es) x {per_single}"
    if master:
        text_ += f" + {master} kept by the master"
    return text_


class ServerLimitError(Exception):
    """A database server's limit could not be read (``--db-max-connections-from-server``);
    the message names the server with the password masked."""


def server_limits(engines: Iterable[Engine]) -> dict[str, int]:
    """The connections each database server allows a user that is not a superuser, read
    with one query per server: only on request (``--db-max-connections-from-server``).
    Raises :class:`ServerLimitError` when a server cannot be asked."""
    limits: dict[str, int] = {}
    for engine in engines:
        key = server_key(masked_url(engine))
        if key is None or key in limits:
            continue
        backend = engine.url.get_backend_name()
        if backend == "postgresql":
            query = text(
                "SELECT current_setting('max_connections')::int"
                " - current_setting('superuser_reserved_connections')::int"
                " - coalesce(current_setting('reserved_connections', true)::int, 0)"
            )
        elif backend in ("mysql", "mariadb"):
            query = text("SELECT @@max_connections")
        else:
            continue
        try:
            with contextlib.closing(engine.connect()) as conn:
                limits[key] = int(conn.execute(query).scalar_one())
        except Exception as exc:
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()
            raise ServerLimitError(
                f"could not read the connection limit of {masked_url(engine)}: "
                f"{type(exc).__name__}: {mask_passwords(first[0] if first else '')}"
            ) from None
    return limits
