"""``flask dbfix check``: what uWSGI's master would hand to its workers, before deploying.

``flask --app APP dbfix check`` loads the app exactly as ``flask`` does, so the database
connections that are open when the command starts are the ones uWSGI's master would
hold when it forks. The command lists them with the code that opened them, audits the
uWSGI ini, and gives a verdict. It never opens a connection itself.

The command is a thin wrapper: :func:`build_report`, :func:`render_human` and
:func:`report_to_json` do the work and are importable on their own.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
import textwrap
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Literal

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from .config import DBFixConfig
from .registry import DEFAULT_BIND_NAME, app_engines, flask_sqlalchemy_engines
from .tracking import CodeLocation, is_process_local, masked_url, open_connections
from .uwsgi_ini import (
    IniError,
    ServedApp,
    Unresolved,
    UwsgiIni,
    UwsgiSettings,
    read_ini,
    settings_from_ini,
)

__all__ = [
    "SCHEMA_VERSION",
    "AppMatch",
    "CheckReport",
    "EngineReport",
    "Finding",
    "PreforkConnection",
    "UwsgiReport",
    "build_report",
    "dbfix_cli",
    "exit_code",
    "render_human",
    "report_to_json",
]

SCHEMA_VERSION = 1
DEFAULT_INI = "uwsgi.ini"
WIDTH = 80

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}
_SEVERITY_COLOR = {"error": "red", "warning": "yellow", "info": "cyan"}
_URL_PASSWORD = re.compile(r"(\b[\w.+-]+://[^:/?#@\s]*:)[^@\s]*@")


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
    its connections are counted from the pool, without origins."""


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
class CheckReport:
    """Everything ``flask dbfix check`` found, ready to print or serialise."""

    app_name: str
    app_import_path: str | None
    pid: int
    config: DBFixConfig | None
    """``None`` when FlaskDBFix was not initialised on the app."""
    engines: tuple[EngineReport, ...]
    prefork: tuple[PreforkConnection, ...]
    uwsgi: UwsgiReport | None
    ini_source: str
    """``named`` (``--ini``), ``default`` (``./uwsgi.ini``) or ``none``."""
    findings: tuple[Finding, ...] = field(default=())


def exit_code(report: CheckReport, strict: bool = False) -> int:
    """0 nothing to fix, 1 errors (or warnings with ``strict``)."""
    severities = {f.severity for f in report.findings}
    if "error" in severities or (strict and "warning" in severities):
        return 1
    return 0


def build_report(
    app: Flask,
    ini_path: str | os.PathLike[str] | None = None,
    *,
    app_import_path: str | None = None,
    default_ini: str | os.PathLike[str] = DEFAULT_INI,
) -> CheckReport:
    """Inspect ``app`` as loaded in this process and the uWSGI ini that will serve it.

    ``ini_path`` names the ini (``path`` or ``path:section``); ``None`` uses
    ``default_ini`` when that file exists and audits no ini otherwise. Raises
    :class:`~flask_uwsgi_dbfix.uwsgi_ini.IniError` when the ini cannot be used.
    """
    ini_source = "named"
    if ini_path is None:
        ini_source = "default" if os.path.isfile(default_ini) else "none"
        ini_path = default_ini if ini_source == "default" else None
    ini = read_ini(ini_path) if ini_path is not None else None
    engines, prefork = _inspect_engines(app)
    uwsgi = _uwsgi_report(ini, app, app_import_path) if ini is not None else None
    report = CheckReport(
        app_name=app.name,
        app_import_path=app_import_path,
        pid=os.getpid(),
        config=_config(app),
        engines=engines,
        prefork=prefork,
        uwsgi=uwsgi,
        ini_source=ini_source,
    )
    findings = sorted(_findings(report), key=lambda f: _SEVERITY_ORDER[f.severity])
    return dataclasses.replace(report, findings=tuple(findings))


def _config(app: Flask) -> DBFixConfig | None:
    state = app.extensions.get("dbfix")
    config = getattr(state, "config", None)
    return config if isinstance(config, DBFixConfig) else None


def _inspect_engines(
    app: Flask,
) -> tuple[tuple[EngineReport, ...], tuple[PreforkConnection, ...]]:
    engines, prefork = [], []
    managed = app_engines(app)
    for m in managed:
        url = masked_url(m.engine)
        opened = open_connections(m.engine)
        engines.append(_engine_report(m.name, m.source, m.engine, len(opened), True))
        prefork += [PreforkConnection(m.name, url, c.pid, c.checked_out, c.origin) for c in opened]
    known = {id(m.engine) for m in managed}
    for key, engine in flask_sqlalchemy_engines(app).items():
        if id(engine) in known or is_process_local(engine):
            continue
        name = DEFAULT_BIND_NAME if key is None else key
        idle, held = _pool_counts(engine)
        engines.append(_engine_report(name, "flask-sqlalchemy", engine, idle + held, False))
        url, pid = masked_url(engine), os.getpid()
        prefork += [PreforkConnection(name, url, pid, False, None) for _ in range(idle)]
        prefork += [PreforkConnection(name, url, pid, True, None) for _ in range(held)]
    return tuple(engines), tuple(prefork)


def _pool_counts(engine: Engine) -> tuple[int, int]:
    """(idle, checked out) connections of an untracked engine, from its pool."""
    pool = engine.pool
    if isinstance(pool, QueuePool):
        return pool.checkedin(), pool.checkedout()
    return 0, 0


def _engine_report(
    name: str, source: str, engine: Engine, opened: int, managed: bool
) -> EngineReport:
    pool = engine.pool
    size = pool.size() if isinstance(pool, QueuePool) else None
    overflow = getattr(pool, "_max_overflow", None) if isinstance(pool, QueuePool) else None
    return EngineReport(
        name=name,
        source=source,
        url=masked_url(engine),
        dialect=engine.dialect.name,
        driver=str(engine.dialect.driver),
        pool_class=type(pool).__name__,
        pool_size=size,
        max_overflow=overflow if isinstance(overflow, int) else None,
        open_connections=opened,
        managed=managed,
    )


# -- the uWSGI side --------------------------------------------------------------------


def _uwsgi_report(ini: UwsgiIni, app: Flask, app_import_path: str | None) -> UwsgiReport:
    settings = settings_from_ini(ini)
    forks, reason = _fork_model(settings)
    matches = tuple(_match_served(app, s, app_import_path) for s in settings.served)
    return UwsgiReport(ini, settings, matches, forks, reason)


def _fork_model(s: UwsgiSettings) -> tuple[bool | None, str]:
    """Would uWSGI load the app once and fork workers that inherit its connections?"""
    if s.lazy_apps:
        return False, f"{s.lazy_key}: each worker loads the app itself after the fork"
    if s.lazy_apps is None:
        return None, "lazy-apps/lazy could not be resolved"
    if s.master:
        return True, "the master loads the app, then forks every worker"
    if s.processes is not None and s.processes > 1:
        return True, "the first process loads the app, then forks the other workers"
    if s.master is False and (not s.processes_set or s.processes is not None):
        return False, "no master and a single process: uWSGI does not fork"
    return None, "master/processes could not be resolved"


def _match_served(app: Flask, served: ServedApp, import_path: str | None) -> AppMatch:
    """Compare an app the ini serves with the app being checked, importing nothing."""
    module = _loaded_module(served)
    if module is None:
        return _match_unloaded(served)
    name = served.callable or "application"
    if name.endswith("()"):
        return _match_factory(served, module, name[:-2], import_path)
    target = getattr(module, name, None)
    if target is None:
        detail = f"{module.__name__} has no '{name}': uWSGI would fail to load it"
        return AppMatch(served, "different", detail)
    if target is app or getattr(target, "__self__", None) is app:
        return AppMatch(served, "same", f"{module.__name__}:{name} is this app")
    if isinstance(target, Flask):
        detail = f"{module.__name__}:{name} is another Flask app ({target.name})"
        return AppMatch(served, "different", detail)
    detail = f"{module.__name__}:{name} is a {type(target).__name__}, not this Flask app"
    return AppMatch(served, "unknown", detail + " (it may wrap it)")


def _match_unloaded(served: ServedApp) -> AppMatch:
    if served.module is None and served.file is None:
        return AppMatch(served, "unknown", f"cannot tell what '{served.spec}' loads")
    what = served.module or served.file
    detail = f"uWSGI loads {what}, which this check did not import"
    return AppMatch(served, "different", detail)


def _match_factory(
    served: ServedApp, module: ModuleType, factory: str, import_path: str | None
) -> AppMatch:
    if not callable(getattr(module, factory, None)):
        detail = f"{module.__name__} has no '{factory}': uWSGI would fail to load it"
        return AppMatch(served, "different", detail)
    target_module, target_attr = _flask_target(import_path)
    same_module = target_module == module.__name__
    named = target_attr is not None and target_attr.split("(")[0] == factory
    found = target_attr is None and factory in ("create_app", "make_app")
    if same_module and (named or (found and not _has_flask_instance(module))):
        return AppMatch(served, "same", f"both call {module.__name__}:{factory}()")
    detail = f"uWSGI calls {module.__name__}:{factory}(); cannot tell which app it returns"
    return AppMatch(served, "unknown", detail)


def _has_flask_instance(module: ModuleType) -> bool:
    return any(isinstance(v, Flask) for v in vars(module).values())


def _loaded_module(served: ServedApp) -> ModuleType | None:
    """The already imported module uWSGI would load, found by name or by file."""
    if served.module is not None:
        return sys.modules.get(served.module)
    if served.file is None:
        return None
    wanted = os.path.realpath(served.file)
    for module in list(sys.modules.values()):
        filename = getattr(module, "__file__", None)
        if isinstance(filename, str) and os.path.realpath(filename) == wanted:
            return module
    return None


def _flask_target(import_path: str | None) -> tuple[str | None, str | None]:
    """``flask --app`` as (module name, attribute or call), without touching sys.path."""
    if not import_path:
        return None, None
    path, _, attr = import_path.partition(":")
    if path.endswith(".py") or os.path.isdir(path):
        path = _module_name_for(path)
    return path, attr or None


def _module_name_for(path: str) -> str:
    """What flask.cli.prepare_import would call this file, minus its side effects."""
    path = os.path.realpath(path)
    path = os.path.splitext(path)[0] if path.endswith(".py") else path
    if os.path.basename(path) == "__init__":
        path = os.path.dirname(path)
    names = []
    while True:
        path, name = os.path.split(path)
        names.append(name)
        if not os.path.exists(os.path.join(path, "__init__.py")):
            return ".".join(reversed(names))


# -- findings --------------------------------------------------------------------------


def _findings(report: CheckReport) -> list[Finding]:
    found = _engine_findings(report)
    if report.uwsgi is None:
        found.append(
            Finding(
                "no-uwsgi-ini",
                "info",
                "No uWSGI ini audited (no --ini and no ./uwsgi.ini); assuming uWSGI loads "
                "the app in its master and forks the workers.",
                "Pass --ini PATH to audit the config uWSGI will run with.",
            )
        )
    else:
        found += _ini_findings(report, report.uwsgi)
    return found


def _forks(report: CheckReport) -> bool | None:
    return True if report.uwsgi is None else report.uwsgi.forks


def _engine_findings(report: CheckReport) -> list[Finding]:
    found: list[Finding] = []
    if not report.engines:
        found.append(
            Finding(
                "no-engines",
                "info",
                "No engine for this app (in-memory SQLite is left alone: a fork copies "
                "it safely); nothing can be inherited.",
            )
        )
    found += _prefork_findings(report)
    found += _disabled_findings(report)
    return found


def _prefork_findings(report: CheckReport) -> list[Finding]:
    forks = _forks(report)
    severity: Severity = "error" if forks else "warning" if forks is None else "info"
    groups = Counter((c.engine, _where(c.origin)) for c in report.prefork)
    found = []
    for (engine, where), count in groups.items():
        found.append(
            Finding(
                "prefork-connection",
                severity,
                f"Engine '{engine}' has {_plural(count, 'connection')} open before the "
                f"fork, opened at {where}. " + _prefork_consequence(report, forks),
                "Open no connection while the app is created (move the query into a "
                "request handler or a CLI command), or call engine.dispose() once that "
                "start-up work is done.",
                where if where != _UNKNOWN_ORIGIN else None,
            )
        )
    for c in (c for c in report.prefork if c.checked_out):
        found.append(
            Finding(
                "checked-out-at-fork",
                "error",
                f"The connection of engine '{c.engine}' opened at {_where(c.origin)} is "
                "checked out (held by a Connection or Session) while the app is created. "
                "Whatever holds it is unusable in workers: it would talk on the master's "
                "socket.",
                "Close the Connection/Session (use `with engine.connect():` or "
                "`with Session() as s:`) before the app factory returns.",
                _where(c.origin) if c.origin else None,
            )
        )
    return found


_UNKNOWN_ORIGIN = "an unknown place (not tracked by the extension)"


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _where(origin: CodeLocation | None) -> str:
    return _display_location(origin) if origin is not None else _UNKNOWN_ORIGIN


def _display_location(origin: CodeLocation) -> str:
    """``file:line in function`` with the file relative to the cwd when under it."""
    filename = origin.filename
    try:
        relative = os.path.relpath(filename)
    except ValueError:
        relative = filename
    if not relative.startswith(".."):
        filename = relative
    return f"{filename}:{origin.lineno} in {origin.function}"


def _prefork_consequence(report: CheckReport, forks: bool | None) -> str:
    if forks is False:
        reason = report.uwsgi.fork_reason if report.uwsgi else ""
        return f"Harmless with this config ({reason})."
    fixed = report.config is not None and report.config.enabled
    if forks is None:
        return "Could not tell whether uWSGI forks with it."
    if fixed:
        return (
            "Every worker inherits the socket; the fix makes each worker drop its copy, "
            "but the master keeps a server connection open for nothing."
        )
    return (
        "Every worker inherits the same socket: expect 'SSL error: decryption failed "
        "or bad record mac' and similar errors."
    )


def _disabled_findings(report: CheckReport) -> list[Finding]:
    config = report.config
    if config is not None and config.enabled:
        return []
    what = (
        "FlaskDBFix is not initialised on this app"
        if config is None
        else "The fix is disabled (DBFIX_ENABLED=False)"
    )
    inherits = bool(report.prefork) and _forks(report) is not False
    if inherits:
        now = ", and this app has some."
    elif report.prefork:
        now = "; harmless with this uWSGI config."
    else:
        now = "; none would be inherited now."
    fix = "Call FlaskDBFix(app)." if config is None else "Remove DBFIX_ENABLED=False."
    return [
        Finding(
            "fix-disabled",
            "error" if inherits else "info",
            f"{what}: workers keep connections inherited from the master{now}",
            fix,
        )
    ]


def _ini_findings(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    s = uwsgi.settings
    found = _master_findings(uwsgi, s) + _worker_findings(report, s)
    found += _app_findings(uwsgi)
    found += _unresolved_findings(uwsgi)
    for option in s.inline_comments:
        found.append(
            Finding(
                "ini-inline-comment",
                "warning",
                f"'{option.key} = {_mask(option.value or '')}': uWSGI has no inline "
                "comments, the whole text after '=' is the value.",
                "Put the comment on its own line.",
                f"{_short_path(option.file)}:{option.lineno}",
            )
        )
    for written, meant in s.misspelt:
        found.append(
            Finding(
                "ini-misspelt-option",
                "warning",
                f"'{written}' is not a uWSGI option; uWSGI ignores it silently.",
                f"Write '{meant}'.",
                _ini_location(uwsgi.ini, written),
            )
        )
    return found


def _master_findings(uwsgi: UwsgiReport, s: UwsgiSettings) -> list[Finding]:
    found = []
    if s.master is False:
        forking = s.processes is not None and s.processes > 1
        found.append(
            Finding(
                "no-master",
                "warning" if forking else "info",
                "No master process: uwsgidecorators.postfork needs it, so the extension "
                "falls back to chaining uwsgi.post_fork_hook and to its pid guard.",
                "Set master = true.",
                _ini_location(uwsgi.ini, "master"),
            )
        )
    if s.lazy_apps:
        found.append(
            Finding(
                "lazy-apps",
                "info",
                f"{s.lazy_key} is on: every worker loads the app itself, so nothing is "
                "inherited. Correct, but it costs memory (no copy-on-write sharing) and "
                "start-up time; not needed with the fix.",
                None,
                _ini_location(uwsgi.ini, s.lazy_key or "lazy-apps"),
            )
        )
    if s.py_call_osafterfork:
        found.append(
            Finding(
                "py-call-osafterfork",
                "info",
                "py-call-osafterfork is on: os.register_at_fork hooks run in workers, so "
                "the extension's os-level hook drops inherited connections too.",
                None,
                _ini_location(uwsgi.ini, "py-call-osafterfork"),
            )
        )
    return found


def _worker_findings(report: CheckReport, s: UwsgiSettings) -> list[Finding]:
    found = []
    ini = report.uwsgi.ini if report.uwsgi else None
    if s.processes_set is False or s.processes in (0, 1):
        respawn = " (a respawned worker is forked again)" if s.master else ""
        found.append(
            Finding(
                "single-worker",
                "info",
                "processes is not set or 1: uWSGI runs a single worker, so no two "
                f"workers share a connection{respawn}.",
                None,
                _ini_location(ini, "processes", "workers") if ini else None,
            )
        )
    if s.max_requests:
        found.append(
            Finding(
                "max-requests",
                "info",
                f"max-requests = {s.max_requests}: workers are recycled and every new one "
                "is forked from the master again; the fix's post-fork hook runs in each.",
                None,
                _ini_location(ini, "max-requests") if ini else None,
            )
        )
    if s.enable_threads is False:
        found.append(
            Finding(
                "enable-threads",
                "info",
                "enable-threads is off: uWSGI before 2.0.27 then runs no Python threads "
                "(2.0.27 and later enable them anyway).",
                None,
                _ini_location(ini, "enable-threads") if ini else None,
            )
        )
    found += _thread_pool_findings(report, s)
    return found


def _thread_pool_findings(report: CheckReport, s: UwsgiSettings) -> list[Finding]:
    found = []
    threads = s.threads or 1
    for engine in report.engines:
        if engine.pool_size is None:
            continue
        capacity = engine.pool_size + max(engine.max_overflow or 0, 0)
        if threads > capacity:
            found.append(
                Finding(
                    "threads-exceed-pool",
                    "warning",
                    f"threads = {threads} per worker but engine '{engine.name}' pools at "
                    f"most {capacity} connections: requests will wait for a connection.",
                    "Raise pool_size/max_overflow (SQLALCHEMY_ENGINE_OPTIONS) to at least "
                    "the thread count.",
                )
            )
    return found


def _app_findings(uwsgi: UwsgiReport) -> list[Finding]:
    where = _ini_location(uwsgi.ini, "module", "wsgi", "wsgi-file", "file", "mount")
    if not uwsgi.settings.served:
        if "module" in uwsgi.settings.unresolved_options:
            return []
        return [
            Finding(
                "no-app-in-ini",
                "info",
                "The ini names no app (module, wsgi-file or mount); it may be given on "
                "uWSGI's command line. Not compared with this app.",
            )
        ]
    statuses = {m.status for m in uwsgi.matches}
    if "same" in statuses:
        return []
    details = "; ".join(m.detail for m in uwsgi.matches)
    if "unknown" in statuses:
        return [Finding("app-unconfirmed", "info", f"Could not confirm: {details}.", None, where)]
    specs = ", ".join(m.app.spec for m in uwsgi.matches)
    return [
        Finding(
            "app-mismatch",
            "warning",
            f"The ini serves {specs}, not the app checked here: {details}.",
            f"Check what uWSGI serves: flask --app {_flask_spec(uwsgi.matches[0].app)} dbfix check",
            where,
        )
    ]


def _flask_spec(app: ServedApp) -> str:
    if app.module is not None:
        return f"{app.module}:{app.callable}"
    return f"{app.file}:{app.callable}" if app.file else app.spec


def _unresolved_findings(uwsgi: UwsgiReport) -> list[Finding]:
    found = []
    audited = set(uwsgi.settings.unresolved_options)
    rest: list[Unresolved] = []
    for item in uwsgi.ini.unresolved:
        if item.key in audited or item.key in ("include", "ini", "inherit"):
            found.append(
                Finding(
                    "ini-unresolved",
                    "warning",
                    f"Cannot resolve {_mask(item.token)} in '{item.key}': {_mask(item.reason)}.",
                    "Check this value where uWSGI runs; it was not guessed.",
                    f"{_short_path(item.file)}:{item.lineno}",
                )
            )
        else:
            rest.append(item)
    if rest:
        keys = ", ".join(dict.fromkeys(i.key for i in rest))
        found.append(
            Finding(
                "ini-unresolved",
                "info",
                f"{_plural(len(rest), 'other value')} cannot be resolved without running uWSGI "
                f"(options: {_mask(keys)}); none of them decides how the app is forked.",
            )
        )
    return found


def _ini_location(ini: UwsgiIni | None, *keys: str) -> str | None:
    option = ini.last(*keys) if ini is not None else None
    return f"{_short_path(option.file)}:{option.lineno}" if option else None


def _short_path(path: str) -> str:
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def _mask(text: str) -> str:
    """Hide a password in any URL taken from the ini: it may hold ``env = DB=...``."""
    return _URL_PASSWORD.sub(r"\1***@", text)


# -- JSON ------------------------------------------------------------------------------


def report_to_json(report: CheckReport, strict: bool = False) -> dict[str, Any]:
    """The ``--json`` object; its schema is documented in docs/cli.md (version 1)."""
    return {
        "schema_version": SCHEMA_VERSION,
        "app": {
            "name": report.app_name,
            "import_path": report.app_import_path,
            "pid": report.pid,
        },
        "extension": _extension_json(report.config),
        "engines": [_engine_json(e) for e in report.engines],
        "prefork_connections": [_prefork_json(c) for c in report.prefork],
        "uwsgi_config": _uwsgi_json(report),
        "findings": [_finding_json(f) for f in report.findings],
        "verdict": _verdict_json(report, strict),
    }


def _extension_json(config: DBFixConfig | None) -> dict[str, Any]:
    if config is None:
        return {"initialised": False, "enabled": False, "prefork_warning": None, "pid_guard": None}
    return {
        "initialised": True,
        "enabled": config.enabled,
        "prefork_warning": config.prefork_warning,
        "pid_guard": config.pid_guard,
    }


def _engine_json(e: EngineReport) -> dict[str, Any]:
    return dict(e.__dict__)


def _prefork_json(c: PreforkConnection) -> dict[str, Any]:
    origin = None
    if c.origin is not None:
        origin = {"file": c.origin.filename, "line": c.origin.lineno, "function": c.origin.function}
    return {
        "engine": c.engine,
        "url": c.url,
        "pid": c.pid,
        "checked_out": c.checked_out,
        "origin": origin,
    }


def _uwsgi_json(report: CheckReport) -> dict[str, Any] | None:
    uwsgi = report.uwsgi
    if uwsgi is None:
        return None
    s = uwsgi.settings
    return {
        "path": uwsgi.ini.path,
        "section": uwsgi.ini.section,
        "source": report.ini_source,
        "files": list(uwsgi.ini.files),
        "master": s.master,
        "master_implied_by": s.master_implied_by,
        "processes": s.processes,
        "lazy_apps": s.lazy_apps,
        "lazy_option": s.lazy_key,
        "enable_threads": s.enable_threads,
        "threads": s.threads,
        "py_call_osafterfork": s.py_call_osafterfork,
        "max_requests": s.max_requests,
        "forks": uwsgi.forks,
        "fork_reason": uwsgi.fork_reason,
        "served": [_served_json(m) for m in uwsgi.matches],
        "unresolved": [_unresolved_json(u) for u in uwsgi.ini.unresolved],
    }


def _served_json(m: AppMatch) -> dict[str, Any]:
    return {
        "option": m.app.option,
        "spec": _mask(m.app.spec),
        "module": m.app.module,
        "file": m.app.file,
        "callable": m.app.callable,
        "mountpoint": m.app.mountpoint,
        "matches": m.status,
        "detail": m.detail,
    }


def _unresolved_json(u: Unresolved) -> dict[str, Any]:
    return {
        "file": u.file,
        "line": u.lineno,
        "option": u.key,
        "token": _mask(u.token),
        "reason": _mask(u.reason),
    }


def _finding_json(f: Finding) -> dict[str, Any]:
    return dict(f.__dict__)


def _verdict_json(report: CheckReport, strict: bool) -> dict[str, Any]:
    counts = Counter(f.severity for f in report.findings)
    code = exit_code(report, strict)
    return {
        "status": "fail" if code else "pass",
        "exit_code": code,
        "strict": strict,
        "errors": counts["error"],
        "warnings": counts["warning"],
        "infos": counts["info"],
    }


# -- human output ----------------------------------------------------------------------


def render_human(report: CheckReport, color: bool = False, strict: bool = False) -> str:
    """A short report for an 80-column terminal; ANSI colour only when ``color``."""
    out = _Writer(color)
    out.line(out.bold(f"flask dbfix check: app '{report.app_name}' (pid {report.pid})"))
    _render_engines(out, report)
    _render_prefork(out, report)
    _render_uwsgi(out, report)
    _render_findings(out, report)
    _render_verdict(out, report, strict)
    return "\n".join(out.lines) + "\n"


class _Writer:
    """Collects lines, wrapping long ones with a hanging indent."""

    def __init__(self, color: bool) -> None:
        self.color = color
        self.lines: list[str] = []

    def style(self, text: str, **kwargs: Any) -> str:
        return click.style(text, **kwargs) if self.color else text

    def bold(self, text: str) -> str:
        return self.style(text, bold=True)

    def line(self, text: str = "") -> None:
        self.lines.append(text)

    def heading(self, text: str) -> None:
        self.line()
        self.line(self.bold(text))

    def wrapped(self, text: str, indent: int, first: str = "") -> None:
        """``first`` (padded to ``indent`` visible chars) then ``text`` wrapped to fit;
        a word too long for a line (a URL, a path) is cut rather than overflow."""
        lines = textwrap.wrap(
            text, WIDTH - indent, break_long_words=True, break_on_hyphens=False
        ) or [""]
        self.line((first or " " * indent) + lines[0])
        for line in lines[1:]:
            self.line(" " * indent + line)


def _render_engines(out: _Writer, report: CheckReport) -> None:
    out.heading("Engines")
    if not report.engines:
        out.line("  (none managed)")
    width = max((len(e.name) for e in report.engines), default=0)
    for e in report.engines:
        out.wrapped(e.url, width + 4, f"  {e.name:<{width}}  ")
        pool = e.pool_class
        if e.pool_size is not None:
            pool += f" size {e.pool_size}, overflow {e.max_overflow}"
        detail = f"{e.dialect}+{e.driver}, {pool}, {e.open_connections} open"
        out.wrapped(detail, width + 4)


def _render_prefork(out: _Writer, report: CheckReport) -> None:
    out.heading("Connections open before the fork (what the master hands to workers)")
    if not report.prefork:
        out.line("  none")
        return
    width = max(len(c.engine) for c in report.prefork)
    for c in report.prefork:
        state = "checked out" if c.checked_out else "idle"
        text = f"{_where(c.origin)} [{state}]"
        out.wrapped(text, width + 4, f"  {c.engine:<{width}}  ")


def _render_uwsgi(out: _Writer, report: CheckReport) -> None:
    uwsgi = report.uwsgi
    if uwsgi is None:
        out.heading("uWSGI config: none (no --ini, no ./uwsgi.ini)")
        return
    out.heading(f"uWSGI config: {_short_path(uwsgi.ini.path)} [{uwsgi.ini.section}]")
    s = uwsgi.settings
    implied = f" (implied by {s.master_implied_by})" if s.master_implied_by else ""
    lazy = f" ({s.lazy_key})" if s.lazy_key else ""
    rows = [
        ("master", _show(s, "master", s.master, "no") + implied),
        ("processes", _show(s, "processes", s.processes, "1 (not set)")),
        ("lazy-apps", _show(s, "lazy-apps", s.lazy_apps, "no") + lazy),
        ("enable-threads", _show(s, "enable-threads", s.enable_threads, "not set")),
        ("threads", _show(s, "threads", s.threads, "not set")),
        ("py-call-osafterfork", _show(s, "py-call-osafterfork", s.py_call_osafterfork, "no")),
        ("max-requests", _show(s, "max-requests", s.max_requests, "not set")),
        ("forks", f"{_yes_no(uwsgi.forks)}: {uwsgi.fork_reason}"),
    ]
    rows += [("serves", f"{_mask(m.app.spec)} ({m.status}: {m.detail})") for m in uwsgi.matches]
    for name, value in rows:
        out.wrapped(value, 23, f"  {name:<19}  ")


def _show(s: UwsgiSettings, key: str, value: bool | int | None, unset: str) -> str:
    """An audited option for humans: unresolved is said plainly, never guessed."""
    if key in s.unresolved_options or (value is None and key in ("master", "lazy-apps")):
        return "unresolved"
    return unset if value is None else _yes_no(value)


def _yes_no(value: bool | int | None) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _render_findings(out: _Writer, report: CheckReport) -> None:
    out.heading("Findings")
    if not report.findings:
        out.line("  none")
    for f in report.findings:
        label = out.style(f"{f.severity.upper():<7}", fg=_SEVERITY_COLOR[f.severity], bold=True)
        out.line(f"  {label}  {f.code}")
        if f.location and f.location not in f.message:
            out.wrapped("at " + f.location, 11)
        out.wrapped(f.message, 11)
        if f.fix:
            out.wrapped("fix: " + f.fix, 11)


def _render_verdict(out: _Writer, report: CheckReport, strict: bool) -> None:
    counts = Counter(f.severity for f in report.findings)
    code = exit_code(report, strict)
    summary = (
        f"{_plural(counts['error'], 'error')}, {_plural(counts['warning'], 'warning')}, "
        f"{_plural(counts['info'], 'note')}"
    )
    if code:
        verdict = out.style("FAIL", fg="red", bold=True)
        why = "warnings count as errors with --strict" if not counts["error"] else "fix the errors"
    else:
        verdict = out.style("OK", fg="green", bold=True)
        why = "nothing to fix"
    out.line()
    out.line(f"Verdict: {verdict}: {summary}; {why} (exit {code}).")


# -- the command -----------------------------------------------------------------------


class BadInput(click.ClickException):
    """Bad input: one ``Error: ...`` line on stderr and exit status 2."""

    exit_code = 2


class _OneLineErrorCommand(click.Command):
    """Usage errors (unknown option, missing value) as one line too, exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise BadInput(f"{exc.format_message()} (see --help)") from None


dbfix_cli = AppGroup("dbfix", help="Check that the app is safe under uWSGI's forking workers.")


@dbfix_cli.command(
    "check",
    cls=_OneLineErrorCommand,
    short_help="Diagnose the app and its uwsgi.ini before deploying.",
)
@click.option(
    "--ini",
    "ini_path",
    metavar="PATH[:SECTION]",
    help=f"uWSGI ini file to audit (default: ./{DEFAULT_INI} when present).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (for CI).")
def check_command(ini_path: str | None, as_json: bool, strict: bool) -> None:
    """Report connections the uWSGI master would hand to its workers, audit the
    uWSGI ini, and give a verdict.

    Exit status: 0 nothing to fix, 1 errors (or warnings with --strict), 2 bad input.
    """
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    info = click.get_current_context().find_object(ScriptInfo)
    try:
        report = build_report(app, ini_path, app_import_path=info.app_import_path if info else None)
    except IniError as exc:
        raise BadInput(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report_to_json(report, strict), indent=2))
    else:
        color = _stdout_is_tty()
        click.echo(render_human(report, color, strict), nl=False, color=color)
    click.get_current_context().exit(exit_code(report, strict))


def _stdout_is_tty() -> bool:
    stream = click.get_text_stream("stdout")
    return bool(getattr(stream, "isatty", lambda: False)())
