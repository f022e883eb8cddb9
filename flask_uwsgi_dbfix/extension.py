"""The Flask extension and ``register()``: what switches the fix on, per app or engine."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from sqlalchemy.engine import Engine

from . import _compat, engines, forkhooks
from .commands import dbfix_cli
from .config import PREFIX, DBFixConfig, read_config
from .logs import logger

__all__ = ["EXTENSION_NAME", "DBFixState", "FlaskDBFix", "register"]

EXTENSION_NAME = "dbfix"
_said_no_fork = False


@dataclass(frozen=True)
class DBFixState:
    """What ``app.extensions["dbfix"]`` holds."""

    config: DBFixConfig


def _platform_forks() -> bool:
    """False (said once, at INFO) where there is no fork: nothing can be inherited."""
    global _said_no_fork
    if forkhooks.can_fork():
        return True
    if not _said_no_fork:
        _said_no_fork = True
        logger().info(
            "flask-uwsgi-dbfix: this platform has no os.fork(): no worker can inherit a "
            "connection, so there is nothing to protect and the extension does nothing here"
        )
    return False


def register(
    engine: Engine,
    *,
    name: str = "registered",
    pid_guard: bool = True,
    prefork_warning: bool = True,
    close_before_fork: bool = True,
) -> Engine:
    """Keep a plain ``sqlalchemy.create_engine()`` engine fork-safe too; returns it.

    For engines that Flask-SQLAlchemy does not own; before or after the engine was used.
    ``name`` is how the warning and ``flask dbfix check`` refer to it. The options are
    the ``DBFIX_*`` settings of :class:`~flask_uwsgi_dbfix.DBFixConfig`, for this engine.
    """
    _compat.require_dispose_close()
    engines.require_engine(engine)
    if _platform_forks():
        config = DBFixConfig(
            pid_guard=pid_guard,
            prefork_warning=prefork_warning,
            close_before_fork=close_before_fork,
        )
        engines.register(engine, name, config)
        forkhooks.install()
    return engine


class FlaskDBFix:
    """Makes every engine of an app safe under uWSGI's (or any) pre-forking workers.

    ``FlaskDBFix(app)`` or, in an app factory, ``dbfix = FlaskDBFix()`` then
    ``dbfix.init_app(app)``, anywhere: before or after ``db.init_app(app)`` and the
    app's start-up work. Connections opened before are found and handled too; only the
    line that opened them is unknown (nothing was recording yet). The app is never stored
    here: one instance serves any number of apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``DBFIX_*`` config, manage the app's engines, install the fork hooks."""
        if not isinstance(app, Flask):
            raise TypeError(
                f"FlaskDBFix takes a Flask app, got {type(app).__name__}: pass the Flask app "
                "inside it (middleware keeps it as an attribute, often .app), or call "
                "flask_uwsgi_dbfix.register(engine) for each engine"
            )
        _compat.require_dispose_close()
        if EXTENSION_NAME in app.extensions:
            raise RuntimeError(
                "FlaskDBFix is already initialized on this app; call init_app() once per app."
            )
        for key, value in DBFixConfig().__dict__.items():
            app.config.setdefault(PREFIX + key.upper(), value)
        config = read_config(app.config)
        app.extensions[EXTENSION_NAME] = DBFixState(config)
        app.cli.add_command(dbfix_cli)
        if config.enabled and _platform_forks():
            engines.add_app(app)
            forkhooks.install()

    register = staticmethod(register)  # FlaskDBFix.register(engine): the same function
