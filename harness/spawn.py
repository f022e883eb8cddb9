"""One way to start a server process for tests: its own session, output to a log file."""

from __future__ import annotations

import os
import subprocess
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
