"""One way to start a server process for tests (its own session, output to a log file),
and one way to stop it with everything it forked."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path


def spawn_logged(
    cmd: list[str], log_path: Path, *, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout and stderr in ``log_path`` and no stdin, in a new session
    (its pid is the group id, so everything it forks can be killed together). ``env`` is
    merged over os.environ."""
    with log_path.open("wb") as log_file:
        return subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            cwd=cwd,
            start_new_session=True,
        )


def stop_group(
    process: subprocess.Popen[bytes], timeout: float, sig: int, *, graceful: bool = True
) -> None:
    """``sig`` to ``process`` (started by :func:`spawn_logged`), up to ``timeout`` s for it
    to exit, then SIGKILL to its whole group: children that outlive it (or a hung main
    process) must not leak into other tests. Idempotent; ``graceful=False`` skips ``sig``."""
    pgid = process.pid
    if graceful and process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(5)
    deadline = time.monotonic() + 5
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def group_pids(pgid: int) -> list[int]:
    """Live (non-zombie) processes in process group ``pgid``."""
    found = []
    for pid, stat in _proc_stats():
        state, _ppid, pgrp = stat[0], stat[1], stat[2]
        if int(pgrp) == pgid and state != "Z":
            found.append(pid)
    return found


def _proc_stats() -> Iterator[tuple[int, list[str]]]:
    """(pid, fields after the command name) for every process; vanished ones are skipped."""
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                text = Path(entry.path, "stat").read_text()
            except OSError:
                continue
            yield int(entry.name), text.rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except FileNotFoundError:  # kernel without CONFIG_PROC_CHILDREN, or pid gone
        if not Path(f"/proc/{pid}").exists():
            return []
        return sorted(p for p, stat in _proc_stats() if int(stat[1]) == pid and stat[0] != "Z")
    return sorted(int(p) for p in text.split())
