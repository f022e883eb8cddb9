"""``assert_fork_safe(app)``: prove in an app's own test suite that forked workers share no
database connection with the process that built the app.

It forks a child the way a pre-forking server does and asks, in the child, whether each
engine's pool hands out a connection the parent opened. Importing this module changes
nothing; call :func:`record_origins` early (at the top of ``conftest.py``) so that a
failure can name the line that opened a connection even for an engine the extension does
not manage.
"""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.pool import Pool

from . import _compat, engines, forkhooks, stamps, unmanaged
from ._compat import ConnectionRecord
from .masking import mask_passwords, masked_url

__all__ = [
    "EngineCheck",
    "ForkCheck",
    "assert_fork_safe",
    "record_origins",
    "stop_recording_origins",
]

CHILD_TIMEOUT = 60.0
"""Seconds to wait for the forked child's answer before it is killed."""

_FORK_WARNING = r"This process .* is multi-threaded, use of fork\(\) may lead to deadlocks"

# Child verdicts, per engine.
_INHERITED = "inherited"  # the pool handed the child a connection the parent opened
_NEW = "new"  # the child got a connection of its own
_DROPPED = "dropped"  # handed a record whose inherited connection the pid guard dropped
_NOT_ASKED = "not asked"  # nothing was open in the parent, or it is failing anyway


@dataclass(frozen=True)
class EngineCheck:
    """What the fork did to one engine."""

    name: str
    """``"default"``, the bind key, the ``register()`` name, or ``"unmanaged"``."""
    url: str
    """Password masked."""
    source: str
    """``"flask-sqlalchemy"``, ``"register"`` or ``"other"`` (found alive in the process)."""
    managed: bool
    """The extension forgets its connections in forked children."""
    opened_at: tuple[str, ...]
    """Where each connection open before the fork was opened (one entry per connection)."""
    checked_out: int
    """Connections held by a ``Connection``/``Session`` when the process forked."""
    child: str
    """``inherited``, ``new``, ``dropped``, ``not asked``, or ``error: ...``."""
    manage: str = field(repr=False, default="")
    """How to have the extension manage this engine; empty when it does."""
    other_app: str = ""
    """The other Flask app this engine belongs to (``app 'billing' at billing.wsgi.app``);
    empty for the app under test's own engines and for engines of no app."""

    def problems(self, strict: bool) -> list[tuple[str, str]]:
        """``(what is wrong, what to do)`` pairs; empty when the engine is fork-safe."""
        found = []
        if self.checked_out:
            found.append(
                (
                    f"{self.checked_out} connection(s) checked out (held by a Connection or "
                    "Session) when the process forked: unusable in every worker",
                    "close it before the app is served (`with engine.connect() as conn:`, "
                    "`with Session() as session:`)",
                )
            )
        if self.child == _INHERITED:
            found.append(
                (
                    "the forked child was handed a connection this process opened"
                    + ("" if self.managed else " (engine not managed by flask-uwsgi-dbfix)"),
                    (self.manage + ", or " if self.manage else "")
                    + "close it before the app is served: engine.dispose() once the "
                    "start-up work is done",
                )
            )
        elif strict and self.opened_at and not self.checked_out:
            found.append(
                (
                    f"{len(self.opened_at)} connection(s) open before the fork (strict): "
                    "workers drop their copies, but this process keeps them open on the "
                    "database server for nothing",
                    "open no connection while the app is created, or call engine.dispose() "
                    "once that start-up work is done",
                )
            )
        return found


@dataclass(frozen=True)
class ForkCheck:
    """The result of :func:`assert_fork_safe`; ``str()`` gives a readable summary."""

    engines: tuple[EngineCheck, ...]
    strict: bool
    include_other_apps: bool = False

    @property
    def failures(self) -> tuple[EngineCheck, ...]:
        return tuple(e for e in self.judged if e.problems(self.strict))

    @property
    def judged(self) -> tuple[EngineCheck, ...]:
        """The engines that can fail the check: all but other apps' unless asked."""
        return tuple(e for e in self.engines if self.include_other_apps or not e.other_app)

    @property
    def not_judged(self) -> tuple[EngineCheck, ...]:
        """Other apps' engines that would fail the check with ``include_other_apps=True``."""
        if self.include_other_apps:
            return ()
        return tuple(e for e in self.engines if e.other_app and e.problems(self.strict))

    def __str__(self) -> str:
        failures = self.failures
        if failures:
            lines = [
                f"assert_fork_safe: {len(failures)} engine(s) not safe to fork"
                + (" (strict)" if self.strict else "")
                + ":"
            ]
        else:
            lines = [f"assert_fork_safe: fork-safe, {len(self.judged)} engine(s) checked:"]
        for check in failures or self.judged:
            owner = f", of another {check.other_app}" if check.other_app else ""
            lines.append(f"  engine {check.name!r}{owner} ({check.url})")
            problems = check.problems(self.strict)
            for problem, _ in problems:
                lines.append(f"    {problem}")
            if not problems:
                lines.append(f"    {_describe_pass(check)}")
            for origin, count in Counter(check.opened_at).items():
                lines.append(f"    opened at {origin}" + (f" ({count}x)" if count > 1 else ""))
            for _, fix in problems:
                lines.append(f"    fix: {fix}")
        if self.not_judged:
            lines.append(
                f"  not judged: {len(self.not_judged)} engine(s) of other apps alive in this "
                "process would fail (include_other_apps=True judges them too):"
            )
            for check in self.not_judged:
                lines.append(f"    engine {check.name!r} of {check.other_app} ({check.url})")
        return "\n".join(lines)


def _describe_pass(check: EngineCheck) -> str:
    if not check.opened_at:
        return "no connection open before the fork"
    if check.child == _DROPPED:
        return (
            f"{len(check.opened_at)} connection(s) open before the fork; the pid guard "
            "dropped the child's copy"
        )
    note = check.child[len("error: ") :] if check.child.startswith("error: ") else ""
    return f"{len(check.opened_at)} connection(s) open before the fork; the child got a new one" + (
        f" (its connect failed: {note})" if note else ""
    )


@dataclass
class _Target:
    name: str
    engine: Engine
    source: str
    managed: bool
    records: list[ConnectionRecord]
    checked_out: int
    manage: str
    other_app: str


def assert_fork_safe(
    app: Flask, *, strict: bool = False, include_other_apps: bool = False
) -> ForkCheck:
    """Fork like a pre-forking server's master and fail if a worker would share a database
    connection with this process. Returns the check, whose ``str()`` is a summary.

    ``app`` is used as your fixture built it: nothing is loaded, so connections opened at
    import or in the factory are in the pools, as in a server's master. The child is made
    with :func:`os.fork`, so Python's at-fork hooks run exactly as under gunicorn
    ``--preload``, Celery prefork or ``multiprocessing`` (uWSGI's own ``postfork`` hook
    does the same work there). In the child, each engine's pool hands out a record, and the
    child compares the connection object with those this process held before the fork. It
    never queries, pings or closes a connection the parent opened, and ends with
    :func:`os._exit`, so no finalizer runs: this process's connections keep working.

    Engines checked: every Flask-SQLAlchemy bind of ``app``, every ``register()``-ed
    engine, and every other :class:`~sqlalchemy.engine.Engine` alive in the process that
    holds pooled connections (found with :func:`gc.get_objects`), which catches an engine
    made with ``create_engine()`` that the extension does not manage. So an engine your
    test suite itself keeps connected counts too: ``dispose()`` it first. In-memory SQLite
    is skipped, as the extension does: a fork copies it safely.

    An engine that belongs to *another* Flask app alive in the process (one that a module
    your test imported built at import, say) is named with that app but does not fail the
    check about ``app``: the summary lists it as not judged. ``include_other_apps=True``
    judges those too, as a server's master, which forks them all, would. An engine of no
    app (a plain ``create_engine()``) is always judged: nothing tells it is not ``app``'s.

    Fails (:class:`AssertionError` naming each engine, the code that opened the connection
    and what to do) when a connection is checked out at the fork, or when the child is
    handed a connection this process opened. With ``strict=True`` it also fails on
    connections that are merely open before the fork: safe with the extension, but the
    master keeps them on the server for nothing.

    Python 3.12+ emits a ``DeprecationWarning`` when a process with threads forks. It is
    silenced for this one fork: CPython drops it when ``-W error`` makes it an error, but it
    would still show in pytest's warnings summary and in ``recwarn``/``pytest.warns``. The
    child runs only this check; should a lock held by another thread at fork time block it,
    it is killed after :data:`CHILD_TIMEOUT` seconds and :class:`RuntimeError` is raised.
    """
    __tracebackhide__ = True  # a failure shows the test's line and the message, not this
    if not hasattr(os, "fork"):
        raise RuntimeError(
            "assert_fork_safe() needs os.fork(), which this platform does not have: "
            "pre-forking servers (uWSGI, gunicorn, Celery prefork) need POSIX too"
        )
    if not isinstance(app, Flask):
        raise TypeError(f"assert_fork_safe() takes a Flask app, got {type(app).__name__}")

    gc.collect()  # engines of apps that are already gone must not count
    engines.adopt_app_engines()  # as the fork hooks would: engines made since FlaskDBFix
    live = _live_objects()
    targets = _targets(app, live)
    # Held until the child exits: in the child they keep every inherited connection alive
    # (no address reuse, no dealloc); their identity is what the child compares.
    parent_connections = [
        r.dbapi_connection for r in live.records if r.dbapi_connection is not None
    ]
    del live  # the child needs no list of every app and engine
    verdicts = _fork_and_ask(targets, parent_connections)
    del parent_connections

    check = ForkCheck(
        tuple(
            EngineCheck(
                name=t.name,
                url=masked_url(t.engine),
                source=t.source,
                managed=t.managed,
                opened_at=_origins(t.records),
                checked_out=t.checked_out,
                child=verdict,
                manage=t.manage,
                other_app=t.other_app,
            )
            for t, verdict in zip(targets, verdicts, strict=True)
        ),
        strict,
        include_other_apps,
    )
    if check.failures:
        raise AssertionError(str(check))
    return check


def record_origins() -> None:
    """From now on, record which code opens each connection of every engine in the process,
    managed or not, so that :func:`assert_fork_safe` can name it. Call it at the top of
    ``conftest.py``, before the app is imported. It costs every new connection a walk up
    the stack: meant for test suites, not for production."""
    stamps.record_every_pool()


def stop_recording_origins() -> None:
    """Undo :func:`record_origins`: new connections of unmanaged engines are not recorded
    any more (for a suite that records in some tests only)."""
    stamps.stop_recording()


@dataclass
class _Live:
    engines: list[Engine] = field(default_factory=list)
    records: list[ConnectionRecord] = field(default_factory=list)
    apps: list[Flask] = field(default_factory=list)


def _live_objects() -> _Live:
    live = _Live()
    for obj in gc.get_objects():
        if isinstance(obj, Engine):
            live.engines.append(obj)
        elif isinstance(obj, ConnectionRecord) and obj.dbapi_connection is not None:
            live.records.append(obj)
        elif issubclass(type(obj), Flask):  # not isinstance(): proxies claim to be apps
            live.apps.append(obj)
    return live


def _describe_app(app: Flask) -> str:
    where = unmanaged.import_path(app)
    return f"app {app.import_name!r}" + (f" at {where}" if where else "")


def _other_apps_engines(app: Flask, apps: list[Flask]) -> dict[int, tuple[str, Flask]]:
    """By pool: ``(bind name, owner)`` of each engine that belongs to an app other than
    ``app``, through its Flask-SQLAlchemy or the extension's registry."""
    owned: dict[int, tuple[str, Flask]] = {}
    for managed in engines.all_engines():
        if managed.app is not None and managed.app is not app:
            owned[id(managed.engine.pool)] = (managed.name, managed.app)
    for other in apps:
        if other is app:
            continue
        binds = _compat.flask_sqlalchemy_engines(other)
        for name, engine in engines.named_binds(binds):
            if isinstance(engine, Engine):
                owned.setdefault(id(engine.pool), (name, other))
    return owned


def _gc_name(engine: Engine, managed: dict[int, str]) -> str:
    if id(engine.pool) in managed:
        return managed[id(engine.pool)]
    return unmanaged.import_path(engine) or unmanaged.UNMANAGED


def _targets(app: Flask, live: _Live) -> list[_Target]:
    # By pool: an execution_options() copy of an engine is another Engine on the same pool.
    managed = {id(m.engine.pool): m.name for m in engines.all_engines()}
    others = _other_apps_engines(app, live.apps)
    records = live.records
    by_pool: dict[int, list[ConnectionRecord]] = {}
    for record in records:
        by_pool.setdefault(id(_compat.record_pool(record)), []).append(record)

    state = app.extensions.get("dbfix")
    disabled = state is not None and not state.config.enabled
    binds = _compat.flask_sqlalchemy_engines(app)
    named: list[tuple[str, Engine, str]] = [
        (name, engine, "flask-sqlalchemy") for name, engine in engines.named_binds(binds)
    ]
    named += [(m.name, m.engine, m.source) for m in engines.app_engines(app)]
    named += [
        (others[id(e.pool)][0] if id(e.pool) in others else _gc_name(e, managed), e, "other")
        for e in live.engines
        if by_pool.get(id(e.pool))
    ]

    targets: list[_Target] = []
    seen_pools: set[int] = set()
    for name, engine, source in named:
        if not isinstance(engine, Engine) or engines.is_process_local(engine):
            continue
        if id(engine.pool) in seen_pools:
            continue
        seen_pools.add(id(engine.pool))
        pool_records = by_pool.get(id(engine.pool), [])
        is_managed = id(engine.pool) in managed
        owner = others.get(id(engine.pool)) if source == "other" else None
        other_app = _describe_app(owner[1]) if owner is not None else ""
        targets.append(
            _Target(
                name,
                engine,
                source,
                is_managed,
                pool_records,
                _checked_out(engine.pool, pool_records),
                "" if is_managed else _how_to_manage(source, disabled, other_app),
                other_app,
            )
        )
    return targets


def _checked_out(pool: Pool, records: list[ConnectionRecord]) -> int:
    counter = getattr(pool, "checkedout", None)
    if callable(counter):
        return int(counter())
    return sum(1 for r in records if _compat.holder(r) is not None)


def _how_to_manage(source: str, disabled: bool, other_app: str = "") -> str:
    if other_app:
        return f"FlaskDBFix(app) on {other_app}"
    if source != "flask-sqlalchemy":
        return "flask_uwsgi_dbfix.register(engine)"
    if disabled:
        return "remove DBFIX_ENABLED = False"
    return "FlaskDBFix(app) (it covers every bind)"


def _origins(records: list[ConnectionRecord]) -> tuple[str, ...]:
    """Where each record's connection was opened: known for managed engines, and for every
    engine once :func:`record_origins` is on."""
    origins = (stamps.origin(record) for record in records)
    return tuple(str(o) if o is not None else _UNKNOWN_ORIGIN for o in origins)


_UNKNOWN_ORIGIN = (
    "an unknown place (opened before anything recorded it; call "
    "flask_uwsgi_dbfix.testing.record_origins() at the top of conftest.py to see where)"
)


def _fork_and_ask(targets: list[_Target], parent_connections: list[Any]) -> list[str]:
    """Fork; the child answers one verdict per target over a pipe."""
    __tracebackhide__ = True
    read_fd, write_fd = os.pipe()
    # The extension's before-fork hook would close the parent's idle connections (and
    # maybe warn): this fork only looks, so the parent stays as the caller built it.
    with warnings.catch_warnings(), forkhooks.probe_fork():
        warnings.filterwarnings("ignore", _FORK_WARNING, DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: never return into the caller
        status = 1
        try:
            gc.disable()  # no finalizer of an inherited object may run here
            os.close(read_fd)
            try:
                answer: Any = [_ask_pool(t, parent_connections) for t in targets]
            except BaseException as exc:
                answer = {"error": mask_passwords(f"{type(exc).__name__}: {exc}")}
            data = memoryview(json.dumps(answer).encode())
            while data:
                data = data[os.write(write_fd, data) :]
            status = 0
        finally:
            os._exit(status)
    os.close(write_fd)
    try:
        raw = _read_all(read_fd, pid)
    finally:
        os.close(read_fd)
    _, wait_status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(wait_status)
    reply = json.loads(raw) if code == 0 and raw else {"error": f"exit status {code}"}
    if isinstance(reply, dict):
        raise RuntimeError(
            f"assert_fork_safe: the check failed in the forked child: {reply['error']}"
        )
    verdicts: list[str] = reply
    return verdicts


def _read_all(fd: int, pid: int) -> bytes:
    __tracebackhide__ = True
    chunks: list[bytes] = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise RuntimeError(
                f"assert_fork_safe: the forked child did not answer within {CHILD_TIMEOUT:g} s "
                "(a lock held by another thread when the process forked?)"
            )
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _ask_pool(target: _Target, parent_connections: list[Any]) -> str:
    """In the child: take the record the pool hands out next and tell whose connection it
    is, without any I/O on it. Only a connection the child made itself is closed."""
    if not target.records or target.checked_out:
        return _NOT_ASKED
    try:
        record = _compat.hand_out(target.engine.pool)()
    except Exception as exc:  # only making a new connection can fail here
        first_line = (str(exc).strip().splitlines() or [""])[0]
        return f"error: {type(exc).__name__}: {mask_passwords(first_line)}"
    connection = record.dbapi_connection
    if connection is None:
        return _DROPPED
    if any(connection is c for c in parent_connections):
        return _INHERITED
    try:
        connection.close()  # the child's own: be polite to the server
    except Exception:
        pass
    return _NEW
