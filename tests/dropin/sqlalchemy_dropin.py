"""pytest plugin: registers every engine that SQLAlchemy's own tests create with us.

Loaded with ``-p sqlalchemy_dropin`` into the run of SQLAlchemy's own suite (the
``test/`` folder of its sdist), so that each engine the suite makes is handed to
``flask_uwsgi_dbfix.register()`` right after it is created: whatever that suite asserts
about engines, pools, connections and their events must still hold with the package
active. ``DBFIX_DROPIN_REPORT`` names a file that receives how many engines were
registered (and how many ``register()`` refused), so the caller can tell that the
package was really there. Only the package's public API is used.
"""

from __future__ import annotations

import functools
import json
import os
import weakref
from collections.abc import Callable, Generator
from typing import Any

import pytest
import sqlalchemy
import sqlalchemy.engine
import sqlalchemy.engine.create
from sqlalchemy.engine import Engine

import flask_uwsgi_dbfix

_registered: weakref.WeakSet[Engine] = weakref.WeakSet()
_counts = {"engines": 0, "refused": 0}


def _register(engine: Any, source: str) -> None:
    """Register ``engine`` (an ``AsyncEngine``'s ``.sync_engine``) once; count refusals."""
    candidates: tuple[Any, ...] = (engine, getattr(engine, "sync_engine", None))
    for candidate in candidates:
        if isinstance(candidate, Engine) and candidate in _registered:
            return
        try:
            flask_uwsgi_dbfix.register(candidate, name=f"sqlalchemy-suite:{source}")
        except TypeError:
            continue  # not an Engine: a mock engine, an AsyncEngine, a test double
        _registered.add(candidate)
        _counts["engines"] += 1
        return
    _counts["refused"] += 1


def _registering(factory: Callable[..., Any], source: str) -> Callable[..., Any]:
    """``factory`` whose every engine is registered before the caller sees it."""

    @functools.wraps(factory)
    def create(*args: Any, **kwargs: Any) -> Any:
        engine = factory(*args, **kwargs)
        _register(engine, source)
        return engine

    return create


# Every module that exposes the function, since each holds its own reference; modules
# imported later (the suite's, the asyncio extension's) pick up the wrapped one.
_create_engine = _registering(sqlalchemy.engine.create.create_engine, "create_engine")
sqlalchemy.create_engine = _create_engine
sqlalchemy.engine.create_engine = _create_engine
sqlalchemy.engine.create.create_engine = _create_engine


def _register_suite_db() -> None:
    """The suite's global engine (``testing.db``), which a test class may swap."""
    from sqlalchemy import testing
    from sqlalchemy.testing import config

    for engine in (getattr(testing, "db", None), config.db):
        if engine is not None:
            _register(engine, "testing.db")


@pytest.hookimpl(wrapper=True)
def pytest_sessionstart(session: pytest.Session) -> Generator[None, None, None]:
    """Wrap ``testing_engine`` once SQLAlchemy's plugin has imported ``sqlalchemy.testing``
    and made ``testing.db`` (importing it any earlier defeats its assertion rewriting)."""
    result = yield
    from sqlalchemy.testing import engines

    engines.testing_engine = _registering(engines.testing_engine, "testing_engine")
    _register_suite_db()
    return result


def pytest_runtest_call(item: pytest.Item) -> None:
    """Right before each test body: whatever ``testing.db`` is now is registered too."""
    _register_suite_db()


def pytest_sessionfinish(session: pytest.Session, exitstatus: Any) -> None:
    """The caller asserts from this that the package was really active."""
    with open(os.environ["DBFIX_DROPIN_REPORT"], "w") as report:
        json.dump(_counts, report)
