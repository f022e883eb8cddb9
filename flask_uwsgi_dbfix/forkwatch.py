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
has no such gap. Without it (not Linux, older kernel) :attr:`ForkWatch.page` is ``None``
and callers ask ``os.getpid()`` every time, as before.
"""

from __future__ import annotations

import mmap
import os
import sys

# Linux's value; Python's mmap only exports the name when its build headers had it.
_MADV_WIPEONFORK = getattr(mmap, "MADV_WIPEONFORK", 18)


def _wipe_on_fork_page() -> mmap.mmap | None:
    if not sys.platform.startswith("linux"):  # 18 means something else elsewhere
        return None
    try:
        page = mmap.mmap(-1, mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        page.madvise(_MADV_WIPEONFORK)
    except (AttributeError, OSError, ValueError):  # kernel < 4.14, or no madvise
        return None
    return page


class ForkWatch:
    """The current pid, known without a system call while no fork has happened.

    The guard inlines :meth:`pid` as ``cell[0] if page[0] else refresh()``.
    """

    def __init__(self, page: mmap.mmap | None) -> None:
        self.page = page
        self.cell = [0]  # a list cell: one indexed load in the guard
        self.refresh()

    def refresh(self) -> int:
        """Ask the kernel and re-arm the page. The pid is stored before the page is armed,
        so a thread that sees the page armed also sees this process's pid."""
        pid = os.getpid()
        self.cell[0] = pid
        if self.page is not None:
            self.page[0] = 1
        return pid

    def pid(self) -> int:
        if self.page is not None and self.page[0]:
            return self.cell[0]
        return self.refresh()


WATCH = ForkWatch(_wipe_on_fork_page())
