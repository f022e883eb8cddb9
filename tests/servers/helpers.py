"""Small bounded helpers shared by the server tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from harness.load import LoadResult


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.1)


def results(*loads: LoadResult) -> list[dict[str, Any]]:
    """Every query result and every database error the loads saw, each with its pid."""
    return [r for load in loads for r in load.ok + load.errors]


def in_background(fn: Callable[[], LoadResult]) -> Callable[[], LoadResult]:
    """Run ``fn`` in a thread; the returned function joins it (bounded) and gives its result."""
    box: list[LoadResult] = []
    thread = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    thread.start()

    def join() -> LoadResult:
        thread.join(180)
        assert box, "background load did not finish"
        return box[0]

    return join
