"""The pre-fork warning: which engines handed connections to forked workers, opened where."""

from __future__ import annotations

import logging
import warnings
from collections import Counter
from dataclasses import dataclass

from .registry import ManagedEngine
from .tracking import OpenedConnection, masked_url, open_connections

logger = logging.getLogger("flask_uwsgi_dbfix")


class PreForkConnectionWarning(UserWarning):
    """Workers inherited database connections that the master opened before forking."""


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
        inherited = tuple(c for c in open_connections(managed.engine) if c.pid != current_pid)
        if inherited:
            found.append(InheritedConnections(managed.name, masked_url(managed.engine), inherited))
    return found


def format_warning(found: list[InheritedConnections]) -> str:
    """A message that names each engine and the code that opened its connections."""
    total = sum(len(f.connections) for f in found)
    lines = [
        f"flask-uwsgi-dbfix: {total} database connection(s) were opened before the workers "
        "were forked; each worker dropped its inherited copy and opens its own."
    ]
    for f in found:
        held = f", {f.checked_out} checked out at fork time" if f.checked_out else ""
        lines.append(f"  engine {f.name!r} ({f.url}): {len(f.connections)} connection(s){held}")
        origins = Counter(
            str(c.origin) if c.origin else "(opened before the engine was tracked)"
            for c in f.connections
        )
        for origin, count in origins.most_common():
            times = f" ({count}x)" if count > 1 else ""
            lines.append(f"    opened at {origin}{times}")
    lines.append(
        "  To change: open no connection while the app is created, or call engine.dispose() "
        "once that startup work is done, so the master holds none when it forks."
    )
    if any(f.checked_out for f in found):
        lines.append(
            "  A Connection or Session left open across the fork is unusable in workers: "
            "close it before the app is served."
        )
    return "\n".join(lines)


def emit_warning(found: list[InheritedConnections]) -> None:
    """Warn with :class:`PreForkConnectionWarning` and log it (once, if logging is set up)."""
    message = format_warning(found)
    origin = next((c.origin for f in found for c in f.connections if c.origin), None)
    if origin is None:
        warnings.warn(message, PreForkConnectionWarning, stacklevel=2)
    else:
        # Point the warning at the user's line, so its header and source line are that code.
        warnings.warn_explicit(
            message, PreForkConnectionWarning, origin.filename, origin.lineno, module=__name__
        )
    # Without configured handlers logging would fall back to stderr and print it twice.
    if logger.hasHandlers():
        logger.warning(message)
