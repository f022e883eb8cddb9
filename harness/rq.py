"""A real ``rq worker`` in burst mode: it works through the queue, one forked work-horse per
job, and exits, so the run is bounded by the queue rather than by a sleep."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from pathlib import Path

from .process import venv_command
from .spawn import spawn_logged


def run_rq_burst(
    redis_url: str,
    queue: str,
    *,
    log_path: Path,
    worker_class: str | None = None,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    timeout: float = 120,
    program: Sequence[str] | None = None,
) -> int:
    """Run ``rq worker --burst`` until the queue is empty; its exit status. Killed (with
    everything it forked) after ``timeout`` seconds, which raises TimeoutExpired.
    ``program``: the command instead of this environment's ``rq`` (``dbfix-run rq``)."""
    cmd = [*(program or [venv_command("rq")]), "worker", "--burst", "--url", redis_url]
    if worker_class:
        cmd += ["--worker-class", worker_class]
    cmd.append(queue)
    process = spawn_logged(cmd, log_path, env=env, cwd=cwd)
    try:
        return process.wait(timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(5)
