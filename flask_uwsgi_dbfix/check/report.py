"""What ``flask dbfix check`` finds: the connections uWSGI's master would hand to its workers.

The app is inspected as loaded in this process, so the connections open now are the ones
the master would hold when it forks. :func:`build_report` lists them with the code that
opened them, audits the uWSGI ini and turns both into findings; it never opens a
connection itself. Printing the report is :mod:`flask_uwsgi_dbfix.check.output`'s job.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections import Counter
from dataclasses import dataclass, field
from types import ModuleType
from typing import Literal

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from .. import _compat
from ..config import DBFixConfig
from ..registry import DEFAULT_BIND_NAME, app_engines, flask_sqlalchemy_engines
from ..tracking import (
    CodeLocation,
    is_process_local,
    mask_passwords,
    masked_url,
    open_connections,
)
from .uwsgi_ini import ServedApp, Unresolved, UwsgiIni, UwsgiSettings, read_ini, settings_from_ini

__all__ = [
    "DEFAULT_INI",
    "AppMatch",
    "CheckReport",
    "EngineReport",
    "Finding",
    "PreforkConnection",
    "Severity",
    "UwsgiReport",
    "build_report",
    "exit_code",
]

DEFAULT_INI = "uwsgi.ini"

Severity = Literal["error", "warning", "info"]
_SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "info": 2}
_UNKNOWN_ORIGIN = "an unknown place (opened before flask_uwsgi_dbfix was imported)"
_FORK_HOOKS_FIX = (
    "Or set py-call-uwsgi-fork-hooks = true in the uWSGI ini (uWSGI 2.0.21+): the "
    "master then closes its idle connections itself before each fork."
)


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

    def count(self, severity: Severity) -> int:
        """How many findings have this severity: the verdict is made of these counts."""
        return sum(f.severity == severity for f in self.findings)


def exit_code(report: CheckReport, strict: bool = False) -> int:
    """0 nothing to fix, 1 errors (or warnings with ``strict``)."""
    return 1 if report.count("error") or (strict and report.count("warning")) else 0


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
    :class:`~flask_uwsgi_dbfix.check.uwsgi_ini.IniError` when the ini cannot be used.
    """
    ini_source = "named"
    if ini_path is None:
        ini_source = "default" if os.path.isfile(default_ini) else "none"
        ini_path = default_ini if ini_source == "default" else None
    ini = read_ini(ini_path) if ini_path is not None else None
    engines, prefork = _inspect_engines(app)
    report = CheckReport(
        app_name=app.name,
        app_import_path=app_import_path,
        pid=os.getpid(),
        config=_config(app),
        engines=engines,
        prefork=prefork,
        uwsgi=_uwsgi_report(ini, app, app_import_path) if ini is not None else None,
        ini_source=ini_source,
    )
    findings = sorted(_findings(report), key=lambda f: _SEVERITY_ORDER[f.severity])
    return dataclasses.replace(report, findings=tuple(findings))


# -- wording shared with the output ----------------------------------------------------


def plural(count: int, noun: str) -> str:
    """``1 connection``, ``2 connections``."""
    return f"{count} {noun}" + ("" if count == 1 else "s")


def short_path(path: str) -> str:
    """The path relative to the deepest of the cwd and the ``sys.path`` entries holding
    it (``app/__init__.py``, ``flask_appbuilder/security/...``): short, still exact."""
    target = os.path.abspath(path)
    roots = [os.getcwd(), *(os.path.abspath(p or os.curdir) for p in sys.path)]
    best = None
    for root in roots:
        prefix = root.rstrip(os.sep) + os.sep
        if target.startswith(prefix) and (best is None or len(root) > len(best)):
            best = root
    return path if best is None else os.path.relpath(target, best)


def describe_origin(origin: CodeLocation | None) -> str:
    """``file:line in function (via file:line in function)``, or a plain sentence when the
    origin is not known."""
    if origin is None:
        return _UNKNOWN_ORIGIN
    here = f"{short_path(origin.filename)}:{origin.lineno} in {origin.function}"
    return here if origin.via is None else f"{here} (via {describe_origin(origin.via)})"


# -- the app's engines -----------------------------------------------------------------


def _config(app: Flask) -> DBFixConfig | None:
    state = app.extensions.get("dbfix")
    config = getattr(state, "config", None)
    return config if isinstance(config, DBFixConfig) else None


def _inspect_engines(
    app: Flask,
) -> tuple[tuple[EngineReport, ...], tuple[PreforkConnection, ...]]:
    engines: list[EngineReport] = []
    prefork: list[PreforkConnection] = []
    _compat.create_flask_sqlalchemy_engines(app)
    managed = app_engines(app)
    for m in managed:
        opened = open_connections(m.engine)
        described = _engine_report(m.name, m.source, m.engine, len(opened), True)
        engines.append(described)
        url = described.url
        prefork += [PreforkConnection(m.name, url, c.pid, c.checked_out, c.origin) for c in opened]
    known = {id(m.engine) for m in managed}
    for key, engine in flask_sqlalchemy_engines(app).items():
        if id(engine) in known or is_process_local(engine):
            continue
        name = DEFAULT_BIND_NAME if key is None else key
        idle, held = _pool_counts(engine)
        described = _engine_report(name, "flask-sqlalchemy", engine, idle + held, False)
        engines.append(described)
        url, pid = described.url, os.getpid()
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
        return _missing(served, module, name)
    if target is app or getattr(target, "__self__", None) is app:
        return AppMatch(served, "same", f"{module.__name__}:{name} is this app")
    if isinstance(target, Flask):
        detail = f"{module.__name__}:{name} is another Flask app ({target.name})"
        return AppMatch(served, "different", detail)
    detail = f"{module.__name__}:{name} is a {type(target).__name__}, not this Flask app"
    return AppMatch(served, "unknown", detail + " (it may wrap it)")


def _missing(served: ServedApp, module: ModuleType, name: str) -> AppMatch:
    detail = f"{module.__name__} has no '{name}': uWSGI would fail to load it"
    return AppMatch(served, "different", detail)


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
        return _missing(served, module, factory)
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


# -- findings about the app ------------------------------------------------------------


def _findings(report: CheckReport) -> list[Finding]:
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
    """Would the workers inherit the app's connections? Without an ini, assume so."""
    return True if report.uwsgi is None else report.uwsgi.forks


def _prefork_severity(report: CheckReport, engine: str, forks: bool | None) -> Severity:
    """Error only when workers would really share the socket: the fix makes each worker
    drop its copy of a managed engine's connections, leaving a wasted idle one."""
    if forks is False:
        return "info"
    managed = any(e.name == engine and e.managed for e in report.engines)
    return "warning" if managed or forks is None else "error"


def _master_closes(report: CheckReport, engine: str, checked_out: bool) -> bool:
    """Would the uWSGI master close this connection itself before forking?"""
    uwsgi, config = report.uwsgi, report.config
    return bool(
        not checked_out
        and uwsgi is not None
        and uwsgi.settings.py_call_uwsgi_fork_hooks
        and config is not None
        and config.enabled
        and config.close_before_fork
        and any(e.name == engine and e.managed for e in report.engines)
    )


def _prefork_findings(report: CheckReport) -> list[Finding]:
    forks = _forks(report)
    groups = Counter(
        (
            c.engine,
            describe_origin(c.origin),
            _master_closes(report, c.engine, c.checked_out),
            c.checked_out,
        )
        for c in report.prefork
    )
    found = []
    for (engine, where, closes, held), count in groups.items():
        opened = (
            f"Engine '{engine}' has {plural(count, 'connection')} open before the "
            f"fork, opened at {where}. "
        )
        location = None if where == _UNKNOWN_ORIGIN else where
        if closes and forks is not False:
            found.append(
                Finding(
                    "prefork-connection",
                    "info",
                    opened + "The master closes it before forking (py-call-uwsgi-fork-hooks "
                    "with DBFIX_CLOSE_BEFORE_FORK): workers inherit nothing.",
                    None,
                    location,
                )
            )
            continue
        severity = _prefork_severity(report, engine, forks)
        fix = (
            "Open no connection while the app is created (move the query into a "
            "request handler or a CLI command), or call engine.dispose() once that "
            "start-up work is done."
        )
        if severity != "info" and not held and _fork_hooks_would_help(report):
            fix += " " + _FORK_HOOKS_FIX
        found.append(
            Finding(
                "prefork-connection",
                severity,
                opened + _prefork_consequence(report, forks),
                fix,
                location,
            )
        )
    found += [
        Finding(
            "checked-out-at-fork",
            "error",
            f"The connection of engine '{c.engine}' opened at {describe_origin(c.origin)} is "
            "checked out (held by a Connection or Session) while the app is created. "
            "Nobody can close it before the fork, and whatever holds it fails in workers "
            "on first use (the fix replaces it there by an error that says so).",
            "Close the Connection/Session (use `with engine.connect():` or "
            "`with Session() as s:`) before the app factory returns.",
            describe_origin(c.origin) if c.origin else None,
        )
        for c in report.prefork
        if c.checked_out
    ]
    return found


def _fork_hooks_would_help(report: CheckReport) -> bool:
    uwsgi = report.uwsgi
    return uwsgi is None or not uwsgi.settings.py_call_uwsgi_fork_hooks


def _prefork_consequence(report: CheckReport, forks: bool | None) -> str:
    if forks is False:
        reason = report.uwsgi.fork_reason if report.uwsgi else ""
        return f"Harmless with this config ({reason})."
    if forks is None:
        return "Could not tell whether uWSGI forks with it."
    if report.config is not None and report.config.enabled:
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


# -- findings about the ini ------------------------------------------------------------


def _ini_findings(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    s = uwsgi.settings
    found = _master_findings(uwsgi) + _worker_findings(report, uwsgi)
    found += _interpreter_findings(uwsgi)
    found += _app_findings(uwsgi)
    found += _unresolved_findings(uwsgi)
    found += [
        Finding(
            "ini-inline-comment",
            "warning",
            f"'{option.key} = {mask_passwords(option.value or '')}': uWSGI has no inline "
            "comments, the whole text after '=' is the value.",
            "Put the comment on its own line.",
            _file_line(option.file, option.lineno),
        )
        for option in s.inline_comments
    ]
    found += [
        Finding(
            "ini-misspelt-option",
            "warning",
            f"'{written}' is not a uWSGI option; uWSGI ignores it silently.",
            f"Write '{meant}'.",
            _ini_location(uwsgi.ini, written),
        )
        for written, meant in s.misspelt
    ]
    return found


def _master_findings(uwsgi: UwsgiReport) -> list[Finding]:
    s = uwsgi.settings
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
        found.append(_osafterfork_finding(uwsgi))
    if s.py_call_uwsgi_fork_hooks:
        found.append(
            Finding(
                "py-call-uwsgi-fork-hooks",
                "info",
                "py-call-uwsgi-fork-hooks is on: the master runs os.register_at_fork hooks "
                "before each worker fork, where the extension closes its idle connections "
                "(DBFIX_CLOSE_BEFORE_FORK), and workers run their after-fork hooks.",
                None,
                _ini_location(uwsgi.ini, "py-call-uwsgi-fork-hooks"),
            )
        )
    return found


def osafterfork_kills_workers() -> bool:
    """Python 3.13: uWSGI 2.0.30's py-call-osafterfork aborts every worker at start
    (measured on 3.13.0; a hello-world app does the same)."""
    return sys.version_info >= (3, 13)


def _osafterfork_finding(uwsgi: UwsgiReport) -> Finding:
    where = _ini_location(uwsgi.ini, "py-call-osafterfork")
    # Looked up on the package at call time: flask_uwsgi_dbfix.check.osafterfork_kills_workers
    # is the public name, the one to replace to see the verdict for the other Python.
    from . import osafterfork_kills_workers as kills_workers

    if kills_workers():
        return Finding(
            "py-call-osafterfork",
            "error",
            f"py-call-osafterfork is on and this is Python {sys.version.split()[0]}: uWSGI "
            "2.0.30 kills every worker at start with it on Python 3.13 ('Fatal Python "
            "error: _PyRecursiveMutex_Unlock'), even for a hello-world app.",
            "Remove py-call-osafterfork and set py-call-uwsgi-fork-hooks = true, which "
            "works on Python 3.13 and also runs the after-fork hooks in workers.",
            where,
        )
    return Finding(
        "py-call-osafterfork",
        "info",
        "py-call-osafterfork is on: os.register_at_fork hooks run in workers, so "
        "the extension's os-level hook drops inherited connections too.",
        None,
        where,
    )


def _worker_findings(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    s = uwsgi.settings
    found = []
    if s.processes_set is False or s.processes in (0, 1):
        respawn = " (a respawned worker is forked again)" if s.master else ""
        found.append(
            Finding(
                "single-worker",
                "info",
                "processes is not set or 1: uWSGI runs a single worker, so no two "
                f"workers share a connection{respawn}.",
                None,
                _ini_location(uwsgi.ini, "processes", "workers"),
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
                _ini_location(uwsgi.ini, "max-requests"),
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
                _ini_location(uwsgi.ini, "enable-threads"),
            )
        )
    found += _thread_pool_findings(report.engines, s.threads or 1)
    return found


def _interpreter_findings(uwsgi: UwsgiReport) -> list[Finding]:
    """uWSGI calls ``uwsgi.post_fork_hook`` (what ``uwsgidecorators.postfork`` sets) only
    in the main interpreter (``uwsgi_python_post_fork``); apps in sub-interpreters never
    see it."""
    s = uwsgi.settings
    if s.single_interpreter or "single-interpreter" in s.unresolved_options:
        return []
    isolated = _sub_interpreter_apps(s.served)
    if not isolated or uwsgi.forks is not True:
        return []
    loaded = sum(a.module is not None or a.file is not None for a in s.served)
    where = ", ".join(mask_passwords(a.mountpoint or "") for a in isolated)
    if len(isolated) == 1:
        what = f"the app mounted at {where} runs in its own Python sub-interpreter"
    else:
        what = f"the apps mounted at {where} run in their own Python sub-interpreters"
    return [
        Finding(
            "multiple-interpreters",
            "warning",
            f"{loaded} apps are loaded and single-interpreter is off, so {what}. uWSGI "
            "runs the post-fork hook (uwsgidecorators.postfork) only in the main "
            "interpreter, so the fix's hook never runs for "
            f"{'it' if len(isolated) == 1 else 'them'}: only its pid guard drops "
            "inherited connections, at checkout, and a connection held across the fork "
            "is not protected at all.",
            "Set single-interpreter = true (all apps then share the main interpreter "
            "and its modules).",
            _ini_location(uwsgi.ini, "mount"),
        )
    ]


def _sub_interpreter_apps(served: tuple[ServedApp, ...]) -> list[ServedApp]:
    """The Python apps uWSGI gives a new interpreter without single-interpreter.

    ``module``/``wsgi-file`` load first, in the main interpreter; each ``mount`` then
    gets ``Py_NewInterpreter()`` unless it is the very first app (pyloader.c). A mount
    that is not ``module:callable``, ``.py`` or ``.wsgi`` is not a Python app.
    """
    python = [a for a in served if a.module is not None or a.file is not None]
    mounts = [a for a in python if a.option == "mount"]
    if len(python) < 2 or not mounts:
        return []
    return mounts if len(mounts) < len(python) else mounts[1:]


def _thread_pool_findings(engines: tuple[EngineReport, ...], threads: int) -> list[Finding]:
    found = []
    for engine in engines:
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
    where = _ini_location(uwsgi.ini, "module", "wsgi", "wsgi-file", "file", "mount")
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
                    f"Cannot resolve {mask_passwords(item.token)} in '{item.key}': "
                    f"{mask_passwords(item.reason)}.",
                    "Check this value where uWSGI runs; it was not guessed.",
                    _file_line(item.file, item.lineno),
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
                f"{plural(len(rest), 'other value')} cannot be resolved without running uWSGI "
                f"(options: {mask_passwords(keys)}); none of them decides how the app is forked.",
            )
        )
    return found


def _ini_location(ini: UwsgiIni, *keys: str) -> str | None:
    """Where the option that wins among ``keys`` is set, when it is."""
    option = ini.last(*keys)
    return _file_line(option.file, option.lineno) if option else None


def _file_line(file: str, lineno: int) -> str:
    return f"{short_path(file)}:{lineno}"
