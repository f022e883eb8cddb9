"""One background server process, for any server the tests start (gunicorn, Celery, Redis...).

Each process runs in its own session (process group) with its output in one log file, so a
test can read what it printed and stop it, and everything it forked, by its own pid.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .spawn import _children, spawn_logged, stop_group


@dataclass
class ServerProcess:
    """A started command; ``process.pid`` is also its process group id."""

    process: subprocess.Popen[bytes]
    log_path: Path
    ready_seconds: float = 0.0

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_bytes().decode(errors="replace")

    def children(self) -> list[int]:
        """Direct children of the main process (workers, pool processes, work-horses)."""
        return _children(self.process.pid)

    def stop(
        self, timeout: float = 15, sig: int = signal.SIGTERM, *, graceful: bool = True
    ) -> None:
        """``sig`` to the main process, then SIGKILL to its group; idempotent.
        ``graceful=False``: SIGKILL at once."""
        stop_group(self.process, timeout, sig, graceful=graceful)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def venv_command(name: str) -> str:
    """The console script ``name`` next to this interpreter, so it runs in this environment."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise RuntimeError(f"{name} not found: run scripts/setup.sh")
    return found


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def start_process(
    cmd: list[str],
    *,
    log_path: Path,
    ready: Callable[[ServerProcess], bool],
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> ServerProcess:
    """Start ``cmd`` and poll ``ready`` until it says True; on failure stop it and raise with
    the log's tail. ``env`` is merged over os.environ."""
    started = time.monotonic()
    process = spawn_logged(cmd, log_path, env=env, cwd=cwd)
    server = ServerProcess(process, log_path)
    try:
        while not ready(server):
            if process.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {process.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"{cmd[0]} not ready after {timeout:.0f}s")
            time.sleep(0.05)
    except BaseException as e:
        server.stop()
        if not isinstance(e, Exception):
            raise
        raise RuntimeError(
            f"{e}\ncommand: {' '.join(cmd)}\n--- log tail ({log_path}) ---\n{tail(server.log())}"
        ) from e
    server.ready_seconds = time.monotonic() - started
    return server


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds open (from /proc; Linux only)."""
    inodes = set()
    with contextlib.suppress(OSError):
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
    return inodes


def tcp_sockets() -> list[tuple[str, int, int]]:
    """(inode, local port, remote port) of every TCP socket on this host (/proc/net)."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError):
            for row in Path(table).read_text().splitlines()[1:]:
                fields = row.split()
                if len(fields) > 9:
                    local = int(fields[1].rsplit(":", 1)[1], 16)
                    remote = int(fields[2].rsplit(":", 1)[1], 16)
                    found.append((fields[9], local, remote))
    return found


def local_tcp_ports(pid: int) -> set[int]:
    """Local ports of the TCP sockets process ``pid`` holds (from /proc; Linux only)."""
    inodes = socket_inodes(pid)
    return {local for inode, local, _ in tcp_sockets() if inode in inodes}
