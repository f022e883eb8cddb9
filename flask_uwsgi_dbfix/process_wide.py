"""The process-wide mode: every SQLAlchemy engine of this process, however it is made, gets
what ``register(engine)`` gives, without a line of the app's code changed.

For apps you cannot edit. It is switched on by importing :mod:`flask_uwsgi_dbfix.auto`
(uWSGI: ``import = flask_uwsgi_dbfix.auto``) or by starting the server under ``dbfix-run``
(:mod:`~flask_uwsgi_dbfix.run`), before the app is imported, so the connections the app
opens while it loads are named. ``FLASK_UWSGI_DBFIX=off`` in the environment keeps it off
for one process. Nothing here runs at import of the package.

Engines made from then on are found where ``create_engine()`` announces them
(:func:`~flask_uwsgi_dbfix._compat.watch_engine_creation`): no listener on every pool, no
cost per connection beyond a registered engine's. Engines made before it was switched on
are found once, among live objects, if SQLAlchemy was imported already.
"""

from __future__ import annotations

import gc
import os
import sys
import threading
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

from .config import _FALSE, _TRUE
from .logs import logger

__all__ = [
    "ENV_VAR",
    "SwitchError",
    "environ_now",
    "is_on",
    "requested",
    "switch_off",
    "switch_on",
]

ENV_VAR = "FLASK_UWSGI_DBFIX"
"""``on`` (what ``dbfix-run`` sets) or ``off`` (keeps the mode off in this process)."""
ACCEPTED = "on, off (or 1/0, true/false, yes/no)"


class SwitchError(ValueError):
    """``FLASK_UWSGI_DBFIX`` holds a value that is neither on nor off."""


def requested(environ: Mapping[str, str] = os.environ, *, default: bool = True) -> bool:
    """What ``FLASK_UWSGI_DBFIX`` asks for; ``default`` when unset or empty. Raises
    :class:`SwitchError`, naming the accepted values, for anything else: a misspelt off
    switch must not leave the mode on, nor a misspelt on switch leave it off, in silence."""
    raw = environ.get(ENV_VAR, "")
    word = raw.strip().lower()
    if not word:
        return default
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SwitchError(f"{ENV_VAR}={raw!r} is not a value flask-uwsgi-dbfix knows: use {ACCEPTED}")


def environ_now() -> dict[str, str]:
    """``{FLASK_UWSGI_DBFIX: value}`` as the process has it now. uWSGI applies an ini's
    ``env =`` lines to the C environment; when Python started first (pyuwsgi), its
    ``os.environ``, copied at start-up, never sees them. The C environment is the truth."""
    value = os.environ.get(ENV_VAR)
    try:
        import ctypes

        getenv = ctypes.CDLL(None).getenv
        getenv.restype = ctypes.c_char_p
        raw = getenv(ENV_VAR.encode())
    except Exception:  # no ctypes, no libc symbol: Python's copy is all there is
        raw = None
    if raw is not None:
        value = raw.decode(errors="replace")
    return {} if value is None else {ENV_VAR: value}


class _State:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.undo: Callable[[], None] | None = None


_state = _State()


def is_on() -> bool:
    """Whether the process-wide mode is on in this process."""
    return _state.undo is not None


def switch_on() -> bool:
    """Switch the mode on (once: a second call does nothing). False where it cannot be on:
    no ``os.fork`` (nothing can be inherited) or no SQLAlchemy installed."""
    if not (hasattr(os, "fork") and hasattr(os, "register_at_fork")):
        return False  # forkhooks.can_fork(), without importing SQLAlchemy first
    had_sqlalchemy = "sqlalchemy" in sys.modules
    try:
        from . import _compat, engines, forkhooks
    except ImportError as exc:  # no SQLAlchemy in this environment: nothing to protect
        logger().info("flask-uwsgi-dbfix: process-wide mode not switched on: %s", exc)
        return False
    with _state.lock:
        if _state.undo is not None:
            return True
        _compat.require_dispose_close()
        _state.undo = _compat.watch_engine_creation(_on_engine_created)
    if had_sqlalchemy:
        _adopt_existing(engines.manage_process_wide)
    forkhooks.install()
    logger().debug("flask-uwsgi-dbfix: process-wide mode on in %d", os.getpid())
    return True


def switch_off() -> None:
    """Stop finding new engines (for tests); engines already managed stay managed."""
    with _state.lock:
        undo, _state.undo = _state.undo, None
    if undo is not None:
        undo()


def _on_engine_created(engine: object) -> None:
    """Never raises: ``create_engine()`` of the app must not fail because of us."""
    try:
        from . import engines, forkhooks

        engines.manage_process_wide(engine)  # type: ignore[arg-type]
        # Started under dbfix-run, the mode came up before uWSGI's own module existed: the
        # uWSGI hook is installed now that the app is being loaded inside uWSGI.
        forkhooks.install()
    except Exception:
        logger().exception("flask-uwsgi-dbfix: could not manage a new engine")


def _adopt_existing(manage: Callable[[Engine], object]) -> None:
    """Engines made before the mode was on: one walk over live objects, once."""
    from sqlalchemy.engine import Engine

    for obj in gc.get_objects():
        if type(obj) is Engine:  # not OptionEngine: it shares its parent's pool
            manage(obj)
