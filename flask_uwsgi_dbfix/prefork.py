"""The pre-fork warning: which engines handed connections to forked workers, opened where;
and the master's note about the idle ones it closed itself before forking."""

from __future__ import annotations

import logging
import sys
import warnings
from collections import Counter
from dataclasses import dataclass
from typing import TextIO

from .engines import ManagedEngine, OpenedConnection
from .logs import logger
from .masking import masked_url
from .stamps import UNKNOWN_ORIGIN


class PreForkConnectionWarning(RuntimeWarning):
    """Workers inherited database connections that the master opened before forking.

    A :class:`RuntimeWarning`, not a :class:`UserWarning`: apps silence the latter
    wholesale (``warnings.simplefilter("ignore", UserWarning)``) to hide their libraries'
    noise, and this is the one line the operator must see. Filters that name it (or
    ``RuntimeWarning``, or every warning) still apply.
    """


@dataclass(frozen=True)
class InheritedConnections:
    """The connections one engine carried across a fork."""

    name: str
    url: str
    """Password masked."""
    connections: tuple[OpenedConnection, ...]

    @property
    def checked_out(self) -> int:
        return sum(c.checked_out for c in self.connections)


def inherited_connections(
    engines: list[ManagedEngine], current_pid: int
) -> list[InheritedConnections]:
    """Per engine, the live connections opened by another process than ``current_pid``."""
    found = []
    for managed in engines:
        inherited = tuple(c for c in managed.open_connections() if c.pid != current_pid)
        if inherited:
            found.append(InheritedConnections(managed.name, masked_url(managed.engine), inherited))
    return found


def open_in(engines: list[ManagedEngine]) -> list[InheritedConnections]:
    """Per engine, every live connection: what a child forked now would inherit."""
    return inherited_connections(engines, current_pid=0)


def close_idle_connections(engines: list[ManagedEngine]) -> list[InheritedConnections]:
    """Close the idle pooled connections of ``engines`` (in the process that opened
    them); returns what was closed, per engine."""
    closed = []
    for managed in engines:
        try:
            done = tuple(managed.close_idle())
        except Exception as exc:
            # A user's listener or the driver failed on this engine: the others must still
            # close theirs, and the operator must hear which one kept its connections.
            logger().warning(
                "flask-uwsgi-dbfix: could not close the idle connections of engine %r (%s) "
                "before forking: %s: %s",
                managed.name,
                masked_url(managed.engine),
                type(exc).__name__,
                exc,
            )
            continue
        if done:
            closed.append(InheritedConnections(managed.name, masked_url(managed.engine), done))
    return closed


def _describe(found: list[InheritedConnections], lines: list[str], state: bool = True) -> None:
    for f in found:
        held = f", {f.checked_out} checked out at fork time" if f.checked_out and state else ""
        lines.append(f"  engine {f.name!r} ({f.url}): {len(f.connections)} connection(s){held}")
        origins = Counter(str(c.origin) if c.origin else UNKNOWN_ORIGIN for c in f.connections)
        # Most first, then by place: the same text on every run (pools have no order).
        for origin, count in sorted(origins.items(), key=lambda item: (-item[1], item[0])):
            times = f" ({count}x)" if count > 1 else ""
            lines.append(f"    opened at {origin}{times}")


def format_closed(closed: list[InheritedConnections]) -> str:
    """The master's INFO line: what it closed before forking, and where each was opened."""
    total = sum(len(f.connections) for f in closed)
    lines = [
        f"flask-uwsgi-dbfix: closed {total} idle database connection(s) before forking, "
        "so that the workers inherit none and the server does not keep them open:"
    ]
    _describe(closed, lines, state=False)
    return "\n".join(lines)


def format_warning(found: list[InheritedConnections], uwsgi: bool = True) -> str:
    """A message that names each engine and the code that opened its connections;
    ``uwsgi``: add the uWSGI option that lets the master close idle ones itself."""
    total = sum(len(f.connections) for f in found)
    lines = [
        f"flask-uwsgi-dbfix: {total} database connection(s) were open when the process "
        "forked its workers; each worker dropped its inherited copy and opens its own."
    ]
    _describe(found, lines)
    lines.append(
        "  To change: open no connection while the app is created, or call engine.dispose() "
        "once that startup work is done, so the master holds none when it forks."
        + (
            " Under uWSGI, py-call-uwsgi-fork-hooks = true lets the master close idle ones itself."
            if uwsgi
            else ""
        )
    )
    if any(f.checked_out for f in found):
        lines.append(
            "  A Connection or Session left open across the fork fails on its first use in "
            "each worker (flask_uwsgi_dbfix.HeldAcrossForkError) and works again after a "
            "rollback: close it before the fork."
        )
    return "\n".join(lines)


def format_uncovered(found: list[InheritedConnections]) -> str:
    """The warning for an app whose ``FlaskDBFix`` manages no engine while engines it
    does not manage handed connections to the forked workers."""
    total = sum(len(f.connections) for f in found)
    lines = [
        "flask-uwsgi-dbfix: FlaskDBFix manages no engine in this process, but "
        f"{total} database connection(s) of engines it does not manage were open when the "
        "process forked its workers: every worker shares them (expect 'SSL error: "
        "decryption failed or bad record mac' and similar errors)."
    ]
    _describe(found, lines, state=False)
    paths = [f.name for f in found if "." in f.name]
    target = paths[0] if len(paths) == 1 and len(found) == 1 else "engine"
    lines.append(
        f"  To cover them: call flask_uwsgi_dbfix.register({target}) once the engine is "
        "created, or switch on the process-wide mode without changing the code "
        "(uWSGI: import = flask_uwsgi_dbfix.auto; other servers: start them under dbfix-run)."
    )
    return "\n".join(lines)


def emit_warning(found: list[InheritedConnections], uwsgi: bool = True) -> None:
    """Warn with :class:`PreForkConnectionWarning` about ``found``, one copy."""
    emit(format_warning(found, uwsgi), found)


def emit(message: str, found: list[InheritedConnections]) -> None:
    """Warn with :class:`PreForkConnectionWarning`, one copy, at the user's line.

    Warning filters apply (``ignore``, ``error``) when they name this category, a parent
    of it or every warning. Where Python would print it on stderr, or where
    ``logging.captureWarnings`` would hand it to a logger that a logging config
    disabled, and the app has configured logging, it is printed through the package's
    logger, in the app's log format; otherwise it goes wherever warnings go (pytest, a
    custom display, stderr). Python's own display and ``captureWarnings`` would end the
    message with the source line of the code that connected, a stray line after the
    advice, and logging would place the record in this module: here neither does (the
    record's ``pathname``/``lineno`` are that code's).
    """
    origin = next((c.origin for f in found for c in f.connections if c.origin), None)
    function = origin.function if origin is not None else None
    log = logger()
    with warnings.catch_warnings():
        if (
            (_default_display() or _captured_into_disabled_logger())
            and log.hasHandlers()
            and log.isEnabledFor(logging.WARNING)
        ):
            warnings.showwarning = _LogAt(log, function, prefixed=True)
        elif warnings.showwarning is getattr(logging, "_showwarning", None):
            warnings.showwarning = _LogAt(logging.getLogger("py.warnings"), function)
        elif _default_display():
            warnings.showwarning = _print_without_source
        if origin is None:
            warnings.warn(message, PreForkConnectionWarning, stacklevel=2)
        else:
            # Point the warning at the user's line: its header (and filters) say it.
            warnings.warn_explicit(
                message, PreForkConnectionWarning, origin.filename, origin.lineno, module=__name__
            )


def _default_display() -> bool:
    """Would Python print a warning on stderr itself (nobody replaced or records it)?"""
    original = getattr(warnings, "_showwarning_orig", None)
    impl = getattr(warnings, "_showwarnmsg_impl", None)
    return (
        original is not None
        and warnings.showwarning is original
        and getattr(impl, "__name__", None) == "_showwarnmsg_impl"
    )


def _captured_into_disabled_logger() -> bool:
    """``logging.captureWarnings(True)``, then a logging config disabled ``py.warnings``:
    the warning would be dropped without a trace."""
    captured = warnings.showwarning is getattr(logging, "_showwarning", None)
    return captured and logging.getLogger("py.warnings").disabled


def _print_without_source(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    """Python's display, minus the source line (``line=""``): the message already says
    where each connection was opened."""
    stream = sys.stderr if file is None else file
    if stream is not None:
        stream.write(warnings.formatwarning(message, category, filename, lineno, line=""))


@dataclass(frozen=True)
class _LogAt:
    """A ``showwarning`` that logs one record placed at the warning's own file and line
    (the user's code), as if logged there, instead of in this module or in logging's."""

    log: logging.Logger
    function: str | None
    prefixed: bool = False
    """The package's logger: ``file:line: Category: message`` (what it always said);
    otherwise ``py.warnings``' text, Python's warning format without the source line."""

    def __call__(
        self,
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        if self.prefixed:
            text = f"{filename}:{lineno}: {category.__name__}: {message}"
        else:
            text = warnings.formatwarning(message, category, filename, lineno, line="")
        record = self.log.makeRecord(
            self.log.name, logging.WARNING, filename, lineno, "%s", (text.rstrip("\n"),),
            None, func=self.function,
        )  # fmt: skip
        if self.log.isEnabledFor(logging.WARNING):
            self.log.handle(record)
