"""The fork hooks: before a fork, the parent closes its idle connections; in the forked
child, forget the inherited ones, then warn once per start-up.

Installed by the first ``FlaskDBFix``/``register()`` of a process, never by an import. In
the child two hooks lead here. Under uWSGI, ``uwsgidecorators.postfork`` runs in every
worker, respawned workers, mules and the spooler. For every other fork made through Python
(``os.fork``, ``multiprocessing``, gunicorn, Celery prefork), ``os.register_at_fork``. Its
``before`` hook runs in the parent of those forks, and in the uWSGI master only with
``py-call-uwsgi-fork-hooks``. All their state is one :class:`_Hooks` object.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from . import child, engines
from .logs import logger
from .masking import masked_url
from .prefork import (
    InheritedConnections,
    close_idle_connections,
    emit,
    emit_warning,
    format_closed,
    format_uncovered,
    inherited_connections,
    open_in,
)

__all__ = [
    "before_fork",
    "can_fork",
    "forget_inherited_connections",
    "install",
    "on_uwsgi_postfork",
    "probe_fork",
    "uwsgi_hook_status",
]


class _StartupToken:
    """One byte in a pipe made by the master: the first worker to read it gets to warn.

    The write end is closed at once, so later reads return EOF instead of blocking; the
    master's state is identical for every worker it forks, so any one may speak for all.
    """

    def __init__(self) -> None:
        self._read_fd, write_fd = os.pipe()
        os.write(write_fd, b"1")
        os.close(write_fd)
        # Never block a worker: should anything else hold a write end, an empty pipe
        # simply means "someone else warned".
        os.set_blocking(self._read_fd, False)

    def take(self) -> bool:
        try:
            return os.read(self._read_fd, 1) == b"1"
        except OSError:  # BlockingIOError included
            return False


@dataclass
class _Hooks:
    installed: bool = False
    uwsgi_hook: str = "not installed"
    """``uwsgidecorators``, ``post_fork_hook``, ``not under uWSGI`` or ``not installed``."""
    startup_token: _StartupToken | None = None
    """Under uWSGI only: who warns for the workers of one start-up."""
    inherited: list[InheritedConnections] = field(default_factory=list)
    """Under uWSGI with ``py-call-osafterfork``: what the os-level hook found, for the
    uWSGI hook that runs next to warn about."""
    probing: bool = False
    """``assert_fork_safe``'s fork is under way: look, do not act."""
    parent_warned: bool = False
    uncovered_checked: bool = False
    """The parent looked once for engines the extension does not cover (one heap walk)."""
    reported_by_parent: bool = False
    """Set by the before-fork hook; the child reads its copy: the parent spoke for it."""
    forked: bool = False
    """This process is a forked child: too late to hook uWSGI's forks."""
    lock: threading.Lock = field(default_factory=threading.Lock)


_hooks = _Hooks()


def can_fork() -> bool:
    """Whether this platform forks at all (Windows does not: nothing to protect)."""
    return hasattr(os, "fork") and hasattr(os, "register_at_fork")


def forget_inherited_connections() -> list[InheritedConnections]:
    """Drop every managed engine's connections that another process opened.

    Never closes, pings or writes to them: that is the parent's socket. Returns what was
    inherited, for the warning.
    """
    engines.reset_locks_in_child()
    if not engines.anything_connected():
        # The worker of an app that touched no database before the fork: nothing to read,
        # nothing to drop, and the guards learn on their own that this is a new process.
        # Do as little as possible: each object touched here is a page of memory this
        # worker stops sharing with the master. Engines Flask-SQLAlchemy makes later are
        # adopted by the first_connect listener.
        child.settle_untouched(engines.managed_in_child())
        return []
    if engines.is_pending():
        engines.adopt_app_engines()
    managed = engines.all_engines()
    pid = os.getpid()
    try:  # read before forgetting; a failure here must not stop the forgetting
        found = inherited_connections([m for m in managed if m.prefork_warning], pid)
    except Exception:
        logger().exception("flask-uwsgi-dbfix: could not list inherited connections")
        found = []
    for m in managed:
        try:  # one engine's failure (e.g. a user's dispose listener) must not spare the rest
            child.forget_inherited(m, pid)
        except Exception:
            logger().exception("flask-uwsgi-dbfix: could not reset engine %r", m.name)
    return found


def on_uwsgi_postfork() -> None:
    """uWSGI post-fork hook. Must never raise: an exception here would be logged by every
    worker and could leave the worker half set up."""
    try:
        # With --py-call-osafterfork the os-level hook ran first and kept what it found.
        found = _hooks.inherited + forget_inherited_connections()
        _hooks.inherited.clear()
        token = _hooks.startup_token
        if found and token is not None and token.take():
            emit_warning(found)
        elif not found and token is not None and engines.covers_nothing() and token.take():
            # Only the first worker of a start-up looks (one heap walk, in one worker).
            _warn_uncovered()
    except Exception:
        logger().exception("flask-uwsgi-dbfix: post-fork hook failed")


def _after_fork_in_child() -> None:
    _hooks.forked = True
    try:
        found = forget_inherited_connections()
    except Exception:
        logger().exception("flask-uwsgi-dbfix: after-fork hook failed")
        return
    if found and _hooks.startup_token is not None:
        _hooks.inherited.extend(found)  # under uWSGI: the post-fork hook will warn about these
    elif found:
        logger().log(
            logging.DEBUG if _hooks.reported_by_parent else logging.INFO,
            "flask-uwsgi-dbfix: forked child %d dropped %d inherited connection(s)",
            os.getpid(),
            sum(len(f.connections) for f in found),
        )


@contextlib.contextmanager
def probe_fork() -> Iterator[None]:
    """Around a fork made to look rather than to serve (``assert_fork_safe``): the
    before-fork hook then neither closes nor warns, so the parent stays exactly as it was
    and the child sees what a worker of a master that keeps its connections would."""
    _hooks.probing = True
    try:
        yield
    finally:
        _hooks.probing = False


def before_fork() -> None:
    """``os.register_at_fork(before=...)``: in the process that set the engines up (not,
    e.g., a worker forking its own children), close their idle pooled connections, and
    outside uWSGI warn once per parent about those it could not (checked out) or did not
    (``DBFIX_CLOSE_BEFORE_FORK`` off) close. Never raises."""
    _hooks.reported_by_parent = False
    if _hooks.probing or _in_uwsgi_worker():
        return  # lazy-apps: a worker loaded the app and forks its own children
    # Another thread may hold the registry's lock (it may even wait for this fork): give
    # up closing rather than hang the fork; the children still forget what they inherit.
    if not engines.lock_for_fork():
        logger().debug("flask-uwsgi-dbfix: before fork: registry busy, nothing closed")
        return
    try:
        _close_and_warn()
    except Exception:
        logger().debug("flask-uwsgi-dbfix: before-fork hook failed", exc_info=True)
    finally:
        engines.unlock_after_fork()


def _close_and_warn() -> None:
    pid = os.getpid()
    if engines.is_pending():
        engines.adopt_app_engines()
    live = engines.all_engines()  # keeps them alive until the close and the warning are done
    mine = [m for m in live if m.owner_pid == pid]
    if not mine:
        if _hooks.startup_token is None and not _hooks.uncovered_checked:
            _hooks.uncovered_checked = True  # once per parent, at its first fork
            if engines.covers_nothing():
                _hooks.parent_warned = _warn_uncovered()
        return
    closed = close_idle_connections([m for m in mine if m.close_before_fork])
    if closed:
        logger().info("%s", format_closed(closed))
    logger().debug("flask-uwsgi-dbfix: before fork in %d: closed %d engine(s)", pid, len(closed))
    _hooks.reported_by_parent = True
    if _hooks.startup_token is not None or _hooks.parent_warned:
        return  # under uWSGI the first worker warns, with the same message
    left = open_in([m for m in mine if m.prefork_warning])
    if left:
        _hooks.parent_warned = True
        try:
            emit_warning(left, uwsgi=False)
        except Exception as exc:  # a warnings filter turned it into an error
            logger().warning("%s", exc)


def _warn_uncovered() -> bool:
    """Warn if engines the extension does not manage hold connections a fork hands on
    (``FlaskDBFix(app)`` on an app that keeps its own engine); True if it warned."""
    from .unmanaged import connected_unmanaged_engines

    found = [
        InheritedConnections(u.name, masked_url(u.engine), u.connections)
        for u in connected_unmanaged_engines()
    ]
    if found:
        try:
            emit(format_uncovered(found), found)
        except Exception as exc:  # a warnings filter turned it into an error
            logger().warning("%s", exc)
    return bool(found)


def _in_uwsgi_worker() -> bool:
    if _hooks.startup_token is None:
        return False
    try:
        import uwsgi

        return bool(uwsgi.worker_id())
    except Exception:
        return False


def install() -> bool:
    """Install the fork hooks once per process; False where the platform cannot fork.
    Safe to call anywhere, any number of times."""
    if not can_fork():
        return False
    with _hooks.lock:
        if not _hooks.installed:
            _hooks.installed = True
            os.register_at_fork(before=before_fork, after_in_child=_after_fork_in_child)
            _hooks.uwsgi_hook = _install_uwsgi_hook()
        elif _hooks.uwsgi_hook == "not under uWSGI" and not _hooks.forked:
            # Installed before uWSGI's module existed (dbfix-run starts the mode in the
            # interpreter uWSGI then takes over): try again, still before any fork.
            _hooks.uwsgi_hook = _install_uwsgi_hook()
    return True


def uwsgi_hook_status() -> str:
    """How the uWSGI hook was installed: ``uwsgidecorators``, ``post_fork_hook``,
    ``not under uWSGI`` or ``not installed``."""
    return _hooks.uwsgi_hook


def _install_uwsgi_hook() -> str:
    try:
        import uwsgi
    except ImportError:
        return "not under uWSGI"
    _hooks.startup_token = _StartupToken()
    previous: Any = getattr(uwsgi, "post_fork_hook", None)
    try:
        import uwsgidecorators
    except Exception:
        # uwsgidecorators refuses to import without --master. Chain onto the raw hook
        # instead, keeping whatever was there.
        def chained_hook() -> None:
            on_uwsgi_postfork()
            if previous is not None:
                previous()

        uwsgi.post_fork_hook = chained_hook
        return "post_fork_hook"
    if previous is not None and previous is not getattr(
        uwsgidecorators, "postfork_chain_hook", None
    ):
        # Importing uwsgidecorators replaced a hook the app had set by hand: keep it.
        uwsgidecorators.postfork(previous)
    uwsgidecorators.postfork(on_uwsgi_postfork)
    return "uwsgidecorators"
