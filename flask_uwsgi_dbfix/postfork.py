"""The fork hooks: before a fork, the parent closes its idle connections; in the forked
child, forget the inherited ones, then warn once per startup.

In the child two hooks lead here. Under uWSGI, ``uwsgidecorators.postfork`` runs in
every worker, respawned workers, mules and the spooler. For every other fork made
through Python (``os.fork``, ``multiprocessing``, gunicorn, Celery prefork),
``os.register_at_fork``. Its ``before`` hook runs in the parent of those forks, and in
the uWSGI master only with ``py-call-uwsgi-fork-hooks``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Iterator
from typing import Any

from . import registry, tracking
from .prefork import (
    InheritedConnections,
    close_idle_connections,
    emit_warning,
    format_closed,
    inherited_connections,
    open_in,
)

logger = logging.getLogger("flask_uwsgi_dbfix")

_install_lock = threading.Lock()
_installed = False
_uwsgi_hook = "not installed"
_startup_token: _StartupToken | None = None
_inherited: list[InheritedConnections] = []
_probing = False
_parent_warned = False
_reported_by_parent = False
"""Set by the before-fork hook; the child reads its copy: the parent spoke for it."""


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


def forget_inherited_connections() -> list[InheritedConnections]:
    """Drop every managed engine's connections that another process opened.

    Never closes, pings or writes to them: that is the parent's socket. Returns what was
    inherited, for the warning.
    """
    registry.reset_locks_in_child()
    tracking.reset_locks_in_child()
    engines = registry.all_engines()
    try:  # read before forgetting; a failure here must not stop the forgetting
        found = inherited_connections([m for m in engines if m.prefork_warning], os.getpid())
    except Exception:
        logger.exception("flask-uwsgi-dbfix: could not list inherited connections")
        found = []
    for managed in engines:
        try:  # one engine's failure (e.g. a user's dispose listener) must not spare the rest
            tracking.forget_inherited(managed.engine)
        except Exception:
            logger.exception("flask-uwsgi-dbfix: could not reset engine %r", managed.name)
    return found


def on_uwsgi_postfork() -> None:
    """uWSGI post-fork hook. Must never raise: an exception here would be logged by every
    worker and could leave the worker half set up."""
    try:
        # With --py-call-osafterfork the os-level hook ran first and kept what it found.
        found = _inherited + forget_inherited_connections()
        _inherited.clear()
        if found and _startup_token is not None and _startup_token.take():
            emit_warning(found)
    except Exception:
        logger.exception("flask-uwsgi-dbfix: post-fork hook failed")


def _on_os_fork() -> None:
    try:
        found = forget_inherited_connections()
    except Exception:
        logger.exception("flask-uwsgi-dbfix: after-fork hook failed")
        return
    if found and _startup_token is not None:
        _inherited.extend(found)  # under uWSGI: the post-fork hook will warn about these
    elif found:
        logger.log(
            logging.DEBUG if _reported_by_parent else logging.INFO,
            "flask-uwsgi-dbfix: forked child %d dropped %d inherited connection(s)",
            os.getpid(),
            sum(len(f.connections) for f in found),
        )


@contextlib.contextmanager
def probe_fork() -> Iterator[None]:
    """Around a fork made to look rather than to serve (``assert_fork_safe``): the
    before-fork hook then neither closes nor warns, so the parent stays exactly as it was
    and the child sees what a worker of a master that keeps its connections would."""
    global _probing
    _probing = True
    try:
        yield
    finally:
        _probing = False


def before_fork() -> None:
    """``os.register_at_fork(before=...)``: in the process that set the engines up (not,
    e.g., a worker forking its own children), close their idle pooled connections, and
    outside uWSGI warn once per parent about those it could not (checked out) or did not
    (``DBFIX_CLOSE_BEFORE_FORK`` off) close. Never raises."""
    global _reported_by_parent
    _reported_by_parent = False
    if _probing or _in_uwsgi_worker():
        return  # lazy-apps: a worker loaded the app and forks its own children
    # Another thread may hold the registry's lock (it may even wait for this fork): give
    # up closing rather than hang the fork; the children still forget what they inherit.
    if not registry.lock_for_fork():
        logger.debug("flask-uwsgi-dbfix: before fork: registry busy, nothing closed")
        return
    try:
        _close_and_warn()
    except Exception:
        logger.debug("flask-uwsgi-dbfix: before-fork hook failed", exc_info=True)
    finally:
        registry.unlock_after_fork()


def _close_and_warn() -> None:
    global _reported_by_parent, _parent_warned
    pid = os.getpid()
    mine = [m for m in registry.all_engines() if m.owner_pid == pid]
    if not mine:
        return
    closed = close_idle_connections([m for m in mine if m.close_before_fork])
    if closed:
        logger.info("%s", format_closed(closed))
    logger.debug("flask-uwsgi-dbfix: before fork in %d: closed %d engine(s)", pid, len(closed))
    _reported_by_parent = True
    if _startup_token is not None or _parent_warned:
        return  # under uWSGI the first worker warns, with the same message
    left = open_in([m for m in mine if m.prefork_warning])
    if left:
        _parent_warned = True
        try:
            emit_warning(left, uwsgi=False)
        except Exception as exc:  # a warnings filter turned it into an error
            logger.warning("%s", exc)


def _in_uwsgi_worker() -> bool:
    if _startup_token is None:
        return False
    try:
        import uwsgi

        return bool(uwsgi.worker_id())
    except Exception:
        return False


def install() -> None:
    """Install the fork hooks once per process. Safe to call anywhere, any number of times."""
    global _installed, _uwsgi_hook
    with _install_lock:
        if _installed:
            return
        _installed = True
        os.register_at_fork(before=before_fork, after_in_child=_on_os_fork)
        _uwsgi_hook = _install_uwsgi_hook()


def uwsgi_hook_status() -> str:
    """How the uWSGI hook was installed: ``uwsgidecorators``, ``post_fork_hook``,
    ``not under uWSGI`` or ``not installed``."""
    return _uwsgi_hook


def _install_uwsgi_hook() -> str:
    global _startup_token
    try:
        import uwsgi
    except ImportError:
        return "not under uWSGI"
    _startup_token = _StartupToken()
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
