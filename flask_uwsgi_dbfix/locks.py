"""Locks across a fork: a lock another thread held when the process forked stays held in
the child for good, since that thread does not exist there."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

_L = TypeVar("_L")

__all__ = ["renewed_if_held"]


def renewed_if_held(lock: _L, factory: Callable[[], _L]) -> _L:
    """In a forked child (one thread): ``lock`` if it is free, else a new one from
    ``factory``. A free lock is kept: every object a child makes costs it memory it would
    otherwise share with its parent."""
    if lock.acquire(blocking=False):  # type: ignore[attr-defined]
        lock.release()  # type: ignore[attr-defined]
        return lock
    return factory()
