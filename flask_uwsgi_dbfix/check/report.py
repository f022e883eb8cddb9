"""What ``flask dbfix check`` reports: the connections uWSGI's master would hand to its
workers, the audited uWSGI ini, and the findings, as frozen dataclasses.

:mod:`~flask_uwsgi_dbfix.check.inspection` builds a :class:`CheckReport`,
:mod:`~flask_uwsgi_dbfix.check.findings` adds its findings, and
:mod:`~flask_uwsgi_dbfix.check.output` prints it. The few wording helpers at the end are
shared by the findings and the output, so both say the same thing the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import DEFAULT_INI, DBFixConfig
from ..stamps import UNKNOWN_ORIGIN, CodeLocation, short_path
from .uwsgi_ini import ServedApp, UwsgiIni, UwsgiSettings

__all__ = [
    "DEFAULT_INI",
    "UNKNOWN_ORIGIN",
    "AppMatch",
    "BudgetOptions",
    "CheckReport",
    "DatabaseBudget",
    "EngineReport",
    "Finding",
    "PreforkConnection",
    "Severity",
    "UwsgiReport",
    "describe_origin",
    "exit_code",
    "plural",
    "short_path",
]


Severity = Literal["error", "warning", "note"]


# -- the report ------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One thing to know or to change, with how bad it is."""

    code: str
    severity: Severity
    message: str
    fix: str | None = None
    """What to change; ``None`` when nothing needs to."""
    location: str | None = None
    """``file:line`` the finding is about, when there is one."""


@dataclass(frozen=True)
class EngineReport:
    """An engine the extension manages, described without connecting."""

    name: str
    source: str
    url: str
    """Password masked."""
    dialect: str
    driver: str
    pool_class: str
    pool_size: int | None
    max_overflow: int | None
    open_connections: int
    managed: bool
    """False for an engine the extension does not manage (fix disabled or not set up):
    its connections are read from the pool, with their origins all the same."""
    prepares_statements: bool | None = None
    """psycopg 3 only: whether it prepares statements on the server (``prepare_threshold``
    not ``None``), which PgBouncer's transaction pooling breaks; ``None`` otherwise."""


@dataclass(frozen=True)
class PreforkConnection:
    """A connection open while the app was created: the master would fork with it."""

    engine: str
    url: str
    pid: int
    checked_out: bool
    origin: CodeLocation | None


@dataclass(frozen=True)
class AppMatch:
    """Whether an app the ini serves is the app being checked."""

    app: ServedApp
    status: Literal["same", "different", "unknown"]
    detail: str


@dataclass(frozen=True)
class UwsgiReport:
    """The audited uWSGI ini."""

    ini: UwsgiIni
    settings: UwsgiSettings
    matches: tuple[AppMatch, ...]
    forks: bool | None
    """Would workers inherit what the app opened while loading? ``None``: cannot tell."""
    fork_reason: str


@dataclass(frozen=True)
class BudgetOptions:
    """What the user told the check about the database server (``--db-max-connections``,
    ``--instances``, ``--db-max-connections-from-server``)."""

    db_max_connections: int | None = None
    instances: int = 1
    from_server: bool = False


@dataclass(frozen=True)
class DatabaseBudget:
    """The most connections one app server instance can hold on one database server
    (``max_connections`` is the server's, shared by all its databases)."""

    server: str
    """``host:port`` (no user, no password)."""
    databases: tuple[str, ...]
    """The database names the engines use on it."""
    engines: tuple[str, ...]
    per_worker: int
    """All engines to this database, in one worker with every thread busy."""
    workers: int
    single_threaded: int
    """Mules and spooler processes: each may load the app and hold one per engine."""
    per_single_threaded: int
    master: int
    """Connections the master itself keeps open after forking."""
    per_instance: int
    instances: int
    total: int
    limit: int | None
    """How many the server allows this app's user; ``None`` when not given."""
    limit_source: str | None
    """``--db-max-connections`` or ``server``."""
    arithmetic: str
    """The sum, written out, for the human report."""


@dataclass(frozen=True)
class CheckReport:
    """Everything ``flask dbfix check`` found, ready to print or serialise."""

    app_name: str
    app_import_path: str | None
    pid: int
    config: DBFixConfig | None
    """``None`` when neither FlaskDBFix nor the process-wide mode covers the app."""
    engines: tuple[EngineReport, ...]
    prefork: tuple[PreforkConnection, ...]
    uwsgi: UwsgiReport | None
    ini_source: str
    """``named`` (``--ini``), ``default`` (``./uwsgi.ini``) or ``none``."""
    findings: tuple[Finding, ...] = field(default=())
    process_wide: str | None = None
    """How the process-wide mode is on (the ini line, or this process); ``None``: off."""
    process_wide_error: str | None = None
    """A ``FLASK_UWSGI_DBFIX`` value that is neither on nor off (uWSGI would stop)."""
    process_wide_off: str | None = None
    """Where the ini's import line is switched off (``file:line: env = ...`` or the
    environment)."""
    command: str = "flask dbfix check"
    """How the report names the command that made it."""
    flask_app: bool = True
    """False for another WSGI app (``python -m flask_uwsgi_dbfix check``)."""
    extension_initialised: bool = True
    """``FlaskDBFix`` ran on the app (``config`` may also come from the process-wide mode)."""
    pid_guard_fallback: bool = False
    """The pid guard asks ``os.getpid()`` on every checkout (no fork-wiped page here)."""
    budget: tuple[DatabaseBudget, ...] = ()
    """Per database server: the most connections the deployment can hold (ini x engines)."""

    def count(self, severity: Severity) -> int:
        """How many findings have this severity: the verdict is made of these counts."""
        return sum(f.severity == severity for f in self.findings)


def exit_code(report: CheckReport, strict: bool = False) -> int:
    """0 nothing to fix, 1 errors (or warnings with ``strict``)."""
    return 1 if report.count("error") or (strict and report.count("warning")) else 0


# -- wording shared with the output ----------------------------------------------------


def plural(count: int, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def describe_origin(origin: CodeLocation | None) -> str:
    """``file:line in function (via file:line in function)``, or a plain sentence when the
    origin is not known."""
    if origin is None:
        return UNKNOWN_ORIGIN
    here = f"{short_path(origin.filename)}:{origin.lineno} in {origin.function}"
    return here if origin.via is None else f"{here} (via {describe_origin(origin.via)})"
