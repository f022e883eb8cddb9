"""A fixture that disposes the engines a test created, for Python 3.13's sqlite3.

Python 3.13 warns ``ResourceWarning: unclosed database`` when a sqlite3 connection is
garbage collected unclosed; tests that build throwaway apps on SQLite files would get it
from whatever later test triggers a GC pass. Import ``dispose_new_engines`` into a test
module to use it there (it is autouse).
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
