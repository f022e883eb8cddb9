"""What counts as the bug, and as the fix, in results reported by any server's processes.

Each result is a dict with the ``pid`` of the process that ran the query and either the
``backend`` (PostgreSQL's pid for the connection) it ran on or the ``error`` it got. The
master's (or arbiter's, or main process's) own import-time backend is ``master_backend``.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Evidence:
    results: int = 0
    errors: list[str] = field(default_factory=list)
    """Database errors (not transport errors: those are counted by the load itself)."""
    on_master: set[int] = field(default_factory=set)
    """Processes that ran a query on the master's own connection."""
    shared: dict[int, set[int]] = field(default_factory=dict)
    """Backends used by more than one process."""
    pids: set[int] = field(default_factory=set)
    not_ssl: int = 0

    @property
    def bug_shown(self) -> bool:
        """A query failed, or two processes used one connection (one TLS stream, two writers)."""
        return bool(self.errors) or bool(self.shared) or len(self.on_master) >= 2

    @property
    def isolated(self) -> bool:
        """No error; every process on backends of its own, none of them the master's."""
        return not self.errors and not self.shared and not self.on_master and not self.not_ssl

    def summary(self) -> str:
        return (
            f"{self.results} results from {len(self.pids)} processes: {len(self.errors)} DB "
            f"errors {sorted(set(self.errors))[:4]}, {len(self.on_master)} processes on the "
            f"master's backend, {len(self.shared)} shared backends"
        )


def gather(results: Iterable[dict[str, Any]], master_backend: int | None) -> Evidence:
    found = Evidence()
    owners: dict[int, set[int]] = defaultdict(set)
    for r in results:
        found.results += 1
        pid = r.get("pid")
        if pid is not None:
            found.pids.add(pid)
        if "error" in r:
            found.errors.append(str(r["error"]))
            continue
        owners[r["backend"]].add(r["pid"])
        if r["backend"] == master_backend:
            found.on_master.add(r["pid"])
        if r.get("ssl") is False:
            found.not_ssl += 1
    found.shared = {b: p for b, p in owners.items() if len(p) > 1}
    return found


_DRIVER_ERROR = re.compile(r"\((?:psycopg2?|sqlalchemy)\.[\w.]+\) [^\n\\'\"]+")


def driver_error(text: str) -> str:
    """The driver's one-line message out of a task's or job's error text, else its first line
    (a remote exception reaches the test as a repr or a whole traceback)."""
    found = _DRIVER_ERROR.findall(text)
    if found:
        return str(found[-1]).strip()
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[0] if lines else "(no message)"
