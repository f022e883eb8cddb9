"""``dbfix-run COMMAND [ARGS...]``: run a server (uWSGI, gunicorn, Celery, RQ, any Python
program) with the process-wide mode on, without touching its code or configuration.

Like ``opentelemetry-instrument`` and ``ddtrace-run``: put this package's ``bootstrap``
directory first on ``PYTHONPATH`` (its ``sitecustomize`` switches the mode on before the
program imports anything), set ``FLASK_UWSGI_DBFIX=on`` unless the environment says
otherwise, and replace this process with the command. Nothing is changed outside the
command and the processes it starts.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Sequence

from .process_wide import ENV_VAR, SwitchError, requested

__all__ = ["BOOTSTRAP_DIR", "environment", "main"]

BOOTSTRAP_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bootstrap")
USAGE = "usage: dbfix-run COMMAND [ARGS...]   (e.g. dbfix-run gunicorn --preload app:app)"


def environment(environ: dict[str, str]) -> dict[str, str]:
    """The command's environment: the bootstrap first on ``PYTHONPATH``, the switch on
    unless it is set already. Raises :class:`SwitchError` for a value that is neither."""
    requested(environ)  # a misspelt value fails here, before the command starts
    env = dict(environ)
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([BOOTSTRAP_DIR, *paths])
    env.setdefault(ENV_VAR, "on")
    if not env[ENV_VAR].strip():
        env[ENV_VAR] = "on"
    return env


def main(argv: Sequence[str] | None = None) -> int:
    """Exec the command; returns (exit status 2) only on bad input."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args and args[0] == "--":
        args = args[1:]
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, file=sys.stderr if not args else sys.stdout)
        return 2 if not args else 0
    try:
        env = environment(dict(os.environ))
    except SwitchError as exc:
        print(f"dbfix-run: {exc}", file=sys.stderr)
        return 2
    program = shutil.which(args[0], path=env.get("PATH"))
    if program is None:
        print(f"dbfix-run: command not found: {args[0]}", file=sys.stderr)
        return 2
    try:
        os.execve(program, args, env)
    except OSError as exc:
        print(f"dbfix-run: cannot run {args[0]}: {exc.strerror}", file=sys.stderr)
        return 2
    return 0  # not reached: execve replaces this process


if __name__ == "__main__":
    raise SystemExit(main())
