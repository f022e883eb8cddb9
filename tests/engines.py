"""A fixture that disposes the engines a test created: their drivers warn otherwise.

Python 3.13's sqlite3 warns ``ResourceWarning: unclosed database``, and psycopg 3 (on
every Python) ``ResourceWarning: ... was deleted while still open``, when a connection is
garbage collected unclosed; tests that build throwaway apps would get it from whatever
later test (or the end of the session) triggers a GC pass. Import ``dispose_new_engines``
into a test module to use it there (it is autouse).
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine


def _engines() -> list[Engine]:
    return [obj for obj in gc.get_objects() if isinstance(obj, Engine)]


@pytest.fixture(autouse=True)
def dispose_new_engines() -> Iterator[None]:
    before = {id(e) for e in _engines()}
    yield
    for engine in _engines():
        if id(engine) not in before:
            engine.dispose()
