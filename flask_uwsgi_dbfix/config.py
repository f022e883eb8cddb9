"""``DBFIX_*`` configuration, read and validated once in ``init_app``."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PREFIX = "DBFIX_"
DEFAULT_INI = "uwsgi.ini"
"""The ini ``flask dbfix check`` audits when none is named and this file exists."""

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclass(frozen=True)
class DBFixConfig:
    """Per-app settings. Each field is the lower-case key without the prefix."""

    enabled: bool = True
    """``DBFIX_ENABLED``: master switch; ``False`` installs nothing at all."""
    prefork_warning: bool = True
    """``DBFIX_PREFORK_WARNING``: warn when workers inherit connections from the master."""
    pid_guard: bool = True
    """``DBFIX_PID_GUARD``: replace a pooled connection checked out in a process that did
    not open it (forks that no hook sees)."""
    close_before_fork: bool = True
    """``DBFIX_CLOSE_BEFORE_FORK``: in the process that loaded the app, close the engines'
    idle pooled connections right before it forks (an ``os.register_at_fork`` hook: every
    fork under gunicorn/Celery/RQ/multiprocessing, under uWSGI with
    ``py-call-uwsgi-fork-hooks``), so they do not stay open on the server for nothing."""


class ConfigError(ValueError):
    """A ``DBFIX_*`` key or value that cannot be used; the message says which and why."""


def config_keys() -> list[str]:
    """Every ``DBFIX_`` key this version understands."""
    return [PREFIX + f.name.upper() for f in fields(DBFixConfig)]


def _as_bool(key: str, value: Any) -> bool:
    # Env-derived configs hand us strings; accept the usual spellings, refuse the rest.
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.strip().lower()
        if word in _TRUE:
            return True
        if word in _FALSE:
            return False
    raise ConfigError(
        f"{key} must be a boolean (True/False, or one of 1/0/true/false/yes/no/on/off), "
        f"got {value!r}"
    )


def read_config(config: Mapping[str, Any]) -> DBFixConfig:
    """Build a :class:`DBFixConfig` from a Flask config, rejecting typos and bad values.

    An unknown ``DBFIX_`` key is an error rather than silently ignored: a misspelt off
    switch that does nothing is worse than a crash at start-up.
    """
    known = config_keys()
    unknown = sorted(k for k in config if k.startswith(PREFIX) and k not in known)
    if unknown:
        raise ConfigError(
            f"unknown flask-uwsgi-dbfix config key(s) {', '.join(unknown)}; "
            f"known keys: {', '.join(known)}"
        )
    values = {
        f.name: _as_bool(PREFIX + f.name.upper(), config[PREFIX + f.name.upper()])
        for f in fields(DBFixConfig)
        if PREFIX + f.name.upper() in config
    }
    return DBFixConfig(**values)
