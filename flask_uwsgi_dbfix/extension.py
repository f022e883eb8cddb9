"""The Flask extension: wires an app's engines into the fork hooks."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask
from sqlalchemy.engine import Engine

from . import _compat, postfork, registry
from .cli import dbfix_cli
from .config import PREFIX, DBFixConfig, read_config

EXTENSION_NAME = "dbfix"


@dataclass(frozen=True)
class DBFixState:
    """What ``app.extensions["dbfix"]`` holds."""

    config: DBFixConfig


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
    registry.register(
        engine,
        name=name,
        pid_guard=pid_guard,
        prefork_warning=prefork_warning,
        close_before_fork=close_before_fork,
    )
    postfork.install()
    return engine


class FlaskDBFix:
    """Makes every engine of an app safe under uWSGI's (or any) pre-forking workers.

    ``FlaskDBFix(app)`` or, in an app factory, ``dbfix = FlaskDBFix()`` then
    ``dbfix.init_app(app)``, anywhere: before or after ``db.init_app(app)`` and the
    app's start-up work. Connections opened before are found and handled too. The app
    is never stored here: one instance serves any number of apps.
    """

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Read ``DBFIX_*`` config, manage the app's engines, install the fork hooks."""
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
        if config.enabled:
            registry.add_app(app, config)
            postfork.install()

    register = staticmethod(register)  # FlaskDBFix.register(engine): the same function
