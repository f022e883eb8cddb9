"""This process's pid without a system call on every pool checkout.

``os.getpid()`` is a real system call (glibc stopped caching the pid in 2.25): about
200-450 ns on a VM, which was most of the pid guard's cost (benchmarks/pid_guard.py prints
the parts). Instead the guard reads one byte of a private page marked ``MADV_WIPEONFORK``
(Linux >= 4.14): the kernel gives every child of every ``fork()`` a zeroed copy, whoever
forked (uWSGI's C code, a C extension, ``os.fork``) and whether or not any Python at-fork
hook ran. Non-zero: the cached pid is still this process's. Zero: this is a new process;
ask the kernel once and re-arm the page.

A counter bumped by ``os.register_at_fork`` would be as cheap, but uWSGI runs those hooks
only with ``py-call-osafterfork``; a fork no hook sees would leave it unchanged. The page
has no such gap. Without it (not Linux, older kernel, or an emulator whose ``madvise``
accepts any advice and so cannot be trusted with this one) :attr:`ForkWatch.page` is
``None`` and callers ask ``os.getpid()`` every time.

Relies on the GIL for the order of the stores in :meth:`ForkWatch.refresh`; the
free-threaded build is not supported.
"""

from __future__ import annotations

import mmap
import os
import sys
from typing import Any

# Linux's value; Python's mmap only exports the name when its build headers had it.
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def _wipe_on_fork_page() -> mmap.mmap | None:
    if not sys.platform.startswith("linux"):  # 18 means something else elsewhere
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError:
        return None
    return page if wipes_on_fork(page) else None


def wipes_on_fork(page: Any) -> bool:
    """Ask the kernel to zero ``page`` (an ``mmap``) in every child; False where it will not
    or cannot be trusted to."""
    try:
        page.madvise(-1)
    except OSError:
        pass  # a real kernel refuses nonsense advice
    except (AttributeError, ValueError):  # no madvise
        return False
    else:  # an madvise that accepts anything (older qemu-user) ignores WIPEONFORK too
        return False
    try:
        page.madvise(_MADV_WIPEONFORK)
    except (OSError, ValueError):  # kernel < 4.14
        return False
    return True


class ForkWatch:
    """The current pid, known without a system call while no fork has happened, and a
    generation that tells this process from every other one.

    ``cell`` is ``[pid, generation]``; the guard inlines :meth:`pid` as
    ``cell[0] if page[0] else refresh()``. The generation is bumped once in every new
    process, so it is higher in a process than in any of its ancestors: unlike a pid,
    which the kernel hands out again once its process has exited, it can tell "the
    process that did X" from a later process, whatever pid that one was given.
    """

    def __init__(self, page: mmap.mmap | None) -> None:
        self.page = page
        self.cell = [0, 0]  # a list: one indexed load in the guard
        self.refresh()

    def refresh(self) -> int:
        """Ask the kernel, bump the generation and re-arm the page. Pid and generation are
        stored before the page is armed, so a thread that sees the page armed sees them.
        Two threads of a new process may both get here (no lock: a fork that runs no hook
        could not reset one); the generation then goes up twice, which is as safe."""
        pid = os.getpid()
        self.cell[0] = pid
        self.cell[1] += 1
        if self.page is not None:
            self.page[0] = 1
        return pid

    def generation(self) -> int:
        if self.page is None or not self.page[0]:
            self.refresh()
        return self.cell[1]

    def pid(self) -> int:
        if self.page is not None and self.page[0]:
            return self.cell[0]
        return self.refresh()


_watch: ForkWatch | None = None


def watch() -> ForkWatch:
    """This process's :class:`ForkWatch`, made on first use: importing this module maps no
    page."""
    global _watch
    if _watch is None:
        _watch = ForkWatch(_wipe_on_fork_page())
        if _watch.page is None:
            from .logs import logger

            logger().info("flask-uwsgi-dbfix: %s", FALLBACK_NOTE)
    return _watch


FALLBACK_NOTE = (
    "no fork-wiped page here (MADV_WIPEONFORK needs Linux 4.14+ and a trustworthy "
    "madvise): the pid guard asks os.getpid() on every pool checkout instead, as correct "
    "and a few hundred nanoseconds slower"
)
