"""A listed engine stays usable while its list is in use, even if it is garbage.

An app dropped by an earlier test (or an earlier loop turn) leaves its engine in a
reference cycle: alive until the collector runs. The check, the fork hooks and the test
helper list the live engines, then use each one; a collection in between used to turn
``ManagedEngine.engine`` into ``ReferenceError`` (seen in ``flask dbfix check``).
"""

from __future__ import annotations

import gc
from pathlib import Path

from sqlalchemy import create_engine

from flask_uwsgi_dbfix import engines, register


def _engine_in_a_garbage_cycle(path: Path, name: str) -> None:
    engine = create_engine(f"sqlite:///{path}")
    register(engine, name=name)
    cycle: dict[str, object] = {"engine": engine}
    cycle["self"] = cycle  # only the collector frees it


def test_a_listed_engine_survives_a_collection_while_the_list_is_held(tmp_path: Path) -> None:
    gc.disable()  # the collection must happen exactly between listing and use
    try:
        _engine_in_a_garbage_cycle(tmp_path / "a.db", "in-a-cycle")
        live = engines.all_engines()
        gc.collect()
        assert [m.engine.url.database for m in live if m.name == "in-a-cycle"] == [
            str(tmp_path / "a.db")
        ]
        del live
        gc.collect()
        assert [m for m in engines.all_engines() if m.name == "in-a-cycle"] == []
    finally:
        gc.enable()
