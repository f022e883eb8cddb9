"""Real gunicorn arbiters for tests: ``--preload`` loads the app once in the arbiter and forks
the workers from it, the same inheritance as uWSGI's default (non-lazy) mode."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .process import ServerProcess, free_port, start_process, venv_command
from .uwsgi import _get_status

_BOOTED = re.compile(r"Booting worker with pid: (\d+)")


@dataclass
class GunicornServer:
    server: ServerProcess
    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.server.log()

    def worker_pids(self) -> list[int]:
        return self.server.children()

    def stop(self, *, graceful: bool = True) -> None:
        self.server.stop(graceful=graceful)


def start_gunicorn(
    app: str,
    args: list[str],
    *,
    workers: int,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    ready_path: str = "/ping",
    timeout: float = 60,
    program: Sequence[str] | None = None,
) -> GunicornServer:
    """``gunicorn ARGS -w WORKERS -b 127.0.0.1:PORT APP``; ready when every worker booted and
    ``ready_path`` answers 200 (it must not touch the database). ``program``: the command
    instead of this environment's ``gunicorn`` (e.g. ``dbfix-run gunicorn``)."""
    port = free_port()
    cmd = [
        *(program or [venv_command("gunicorn")]),
        *args,
        "--workers", str(workers),
        "--bind", f"127.0.0.1:{port}",
        "--graceful-timeout", "5",
        app,
    ]  # fmt: skip

    def ready(server: ServerProcess) -> bool:
        booted = set(_BOOTED.findall(server.log()))
        return len(booted) >= workers and _get_status(port, ready_path) == 200

    server = start_process(
        cmd,
        log_path=log_dir / f"gunicorn-{port}.log",
        ready=ready,
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
    return GunicornServer(server, port)
