"""Flask-SQLAlchemy 2.x and 3.x seen through one helper, so the tests run on both stacks."""

from __future__ import annotations

from typing import Any

from flask import Flask
from sqlalchemy.engine import Engine


def fsa_engines(db: Any, app: Flask) -> dict[str | None, Engine]:
    """``db``'s engines for ``app`` by bind key (``None``: the default bind); on
    Flask-SQLAlchemy 2.x, asking creates them, as ``db.engines`` does on 3.x."""
    with app.app_context():
        if hasattr(db, "engines"):
            return dict(db.engines)
        binds = [None, *(app.config.get("SQLALCHEMY_BINDS") or ())]
        return {bind: db.get_engine(app, bind) for bind in binds}
