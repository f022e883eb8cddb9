"""Real uWSGI processes for tests, the demo and benchmarks.

The fork bug only exists in a real pre-forking master, so tests run the actual ``uwsgi`` binary
(from pyuwsgi) rather than a simulation. Each server gets its own port, log file and process
group, so a test can always kill everything it started.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .spawn import _children, spawn_logged, stop_group
from .spawn import group_pids as group_pids  # tests import it from here

_SPAWNED = re.compile(r"spawned uWSGI worker (\d+)")


@dataclass
class UwsgiServer:
    """A running uWSGI master; ``process.pid`` is the master and its process group id."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    ready_seconds: float

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The whole log so far (stdout and stderr of master and workers)."""
        return self.log_path.read_bytes().decode(errors="replace")

    def worker_pids(self) -> list[int]:
        """Current children of the master (workers, plus mules/spooler if configured)."""
        return _children(self.process.pid)

    def pss_kib(self) -> int:
        """Proportional set size of master + workers: shared pages are counted once overall."""
        total = 0
        for pid in [self.process.pid, *self.worker_pids()]:
            with contextlib.suppress(OSError):
                for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        break
        return total

    def stop(self, timeout: float = 15, *, graceful: bool = True) -> None:
        """SIGTERM the master (it runs with --die-on-term), then SIGKILL the group; idempotent.

        ``graceful=False`` skips the SIGTERM (uWSGI buries workers in whole seconds): for
        tests that are done with the server and only need it gone."""
        stop_group(self.process, timeout, signal.SIGTERM, graceful=graceful)


def uwsgi_command() -> str:
    """The uwsgi next to this interpreter (pyuwsgi's), so the app runs in this environment."""
    beside = Path(sys.executable).parent / "uwsgi"
    if beside.is_file():
        return str(beside)
    found = shutil.which("uwsgi")
    if found is None:
        raise RuntimeError("uwsgi not found: pip install pyuwsgi (scripts/setup.sh does)")
    return found


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _http_socket_port(args: list[str]) -> int | None:
    """Port of an ``--http-socket`` already in args; None if there is none."""
    for i, arg in enumerate(args):
        value = None
        if arg == "--http-socket" and i + 1 < len(args):
            value = args[i + 1]
        elif arg.startswith("--http-socket="):
            value = arg.split("=", 1)[1]
        if value is not None:
            return int(value.rsplit(":", 1)[1])
    return None


def _get_status(port: int, path: str) -> int | None:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        try:
            conn.request("GET", path, headers={"Connection": "close"})
            response = conn.getresponse()
            response.read()
            return response.status
        finally:
            conn.close()
    except (OSError, http.client.HTTPException):
        return None


def _tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


def app_args(module: str, *, processes: int, root: Path, master: bool = True) -> list[str]:
    """uWSGI arguments that serve ``module`` (``package.module:callable``) from ``root``, with
    ``root`` on the Python path; ``--need-app`` so that an import error stops uWSGI."""
    return [
        *(["--master"] if master else []),
        "--processes", str(processes),
        "--chdir", str(root),
        "--pythonpath", str(root),
        "--module", module,
        "--need-app",
    ]  # fmt: skip


def start_uwsgi(
    args: list[str],
    *,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    processes: int,
    ready_path: str = "/ping",
    timeout: float = 60,
    log_dir: Path | None = None,
    program: Sequence[str] | None = None,
) -> UwsgiServer:
    """Start uWSGI and wait until ``processes`` workers spawned and ``ready_path`` answers 200.

    ``program``: the command before ``args`` (e.g. ``dbfix-run uwsgi``, or another
    environment's ``uwsgi``); default :func:`uwsgi_command`. ``env`` is merged over
    os.environ. ``ready_path`` must not touch the database: tests rely
    on each worker's first query being their own.
    """
    port = _http_socket_port(args)
    cmd = [*(program or [uwsgi_command()]), *args]
    if port is None:
        port = _free_port()
        cmd += ["--http-socket", f"127.0.0.1:{port}"]
    cmd.append("--die-on-term")
    log_dir = log_dir or Path(tempfile.mkdtemp(prefix="dbfix-uwsgi-"))
    log_path = log_dir / f"uwsgi-{port}.log"
    started = time.monotonic()
    process = spawn_logged(cmd, log_path, env=env, cwd=cwd)
    server = UwsgiServer(process=process, port=port, log_path=log_path, ready_seconds=0.0)
    try:
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"uwsgi exited with {process.returncode}")
            if time.monotonic() - started > timeout:
                raise RuntimeError(f"uwsgi not ready after {timeout:.0f}s")
            spawned = set(_SPAWNED.findall(server.log()))
            if len(spawned) >= processes and _get_status(port, ready_path) == 200:
                break
            time.sleep(0.05)
    except BaseException as e:
        server.stop()
        if not isinstance(e, Exception):  # Ctrl-C stays Ctrl-C
            raise
        raise RuntimeError(
            f"{e}\ncommand: {' '.join(cmd)}\n--- uwsgi log tail ({log_path}) ---\n"
            f"{_tail(server.log())}"
        ) from e
    server.ready_seconds = time.monotonic() - started
    return server


@contextlib.contextmanager
def running_uwsgi(args: list[str], **kw: Any) -> Iterator[UwsgiServer]:
    server = start_uwsgi(args, **kw)
    try:
        yield server
    finally:
        server.stop()


def run_uwsgi_to_exit(
    args: list[str],
    *,
    log_path: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """Run a uWSGI that is expected to exit by itself (e.g. ``--need-app`` with an app that
    fails to load); (exit status, log). Killed with its group after ``timeout`` seconds,
    which raises TimeoutExpired."""
    cmd = [uwsgi_command(), *args, "--http-socket", f"127.0.0.1:{_free_port()}"]
    process = spawn_logged(cmd, log_path, env=env, cwd=cwd)
    try:
        status = process.wait(timeout)
    finally:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(5)
    return status, log_path.read_bytes().decode(errors="replace")
