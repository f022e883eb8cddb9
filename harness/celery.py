"""A real Celery worker (prefork pool) for tests; the broker is the session's Redis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .process import ServerProcess, start_process, venv_command


def start_celery_worker(
    app: str,
    args: list[str],
    *,
    log_dir: Path,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 90,
    program: Sequence[str] | None = None,
) -> ServerProcess:
    """``celery -A APP worker ARGS``; ready when it logs ``ready.`` (its pool is forked then).
    ``program``: the command instead of this environment's ``celery`` (``dbfix-run celery``)."""
    cmd = [*(program or [venv_command("celery")]), "-A", app, "worker", "--without-heartbeat",
           "--without-gossip", "--without-mingle", "--loglevel", "INFO", *args]  # fmt: skip
    return start_process(
        cmd,
        log_path=log_dir / "celery.log",
        ready=lambda server: " ready." in server.log(),
        env=env,
        cwd=cwd,
        timeout=timeout,
    )
