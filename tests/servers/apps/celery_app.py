"""Celery as the Flask docs set it up ("Background Tasks with Celery"), with the app's
database work at import: ``celery -A tests.servers.apps.celery_app:celery_app worker``.

The main process imports this module (and opens a connection) before it forks the prefork
pool, so every pool process inherits that connection. Environment: DATABASE_URL, REDIS_URL,
DBFIX_FIX ("1": FlaskDBFix(app)), WEB_* (Flask config, via from_prefixed_env).
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, Task
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix

PROBE = text("SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")


def celery_init_app(app: Flask) -> Celery:
    """Verbatim the Flask docs' pattern: tasks run inside an app context."""

    class FlaskTask(Task):  # type: ignore[misc]
        def __call__(self, *args: object, **kwargs: object) -> object:
            with app.app_context():
                return self.run(*args, **kwargs)

    celery_app = Celery(app.name, task_cls=FlaskTask)
    celery_app.config_from_object(app.config["CELERY"])
    celery_app.set_default()
    app.extensions["celery"] = celery_app
    return celery_app


def create_app() -> Flask:
    app = Flask(__name__)
    app.config.from_mapping(
        SQLALCHEMY_DATABASE_URI=os.environ["DATABASE_URL"],
        CELERY={
            "broker_url": os.environ["REDIS_URL"],
            "result_backend": os.environ["REDIS_URL"],
            "task_ignore_result": False,
            "broker_connection_retry_on_startup": True,
        },
    )
    app.config.from_prefixed_env("WEB")  # e.g. WEB_DBFIX_PID_GUARD=false, as in web.py
    db.init_app(app)
    if os.environ.get("DBFIX_FIX", "0") == "1":
        FlaskDBFix(app)
    celery_init_app(app)
    with app.app_context():  # startup work, as many apps do: a query while created
        app.config["IMPORT_BACKEND"] = db.session.execute(PROBE).one()[0]  # MARK: import query
        db.session.remove()
    return app


db = SQLAlchemy()
flask_app = create_app()
celery_app: Celery = flask_app.extensions["celery"]


@celery_app.task(name="dbfix.probe")
def probe() -> dict[str, Any]:
    """One query; a database error fails the task."""
    backend, ssl = db.session.execute(PROBE).one()
    db.session.remove()
    return {
        "pid": os.getpid(),
        "backend": backend,
        "ssl": ssl,
        "import": flask_app.config["IMPORT_BACKEND"],
    }
