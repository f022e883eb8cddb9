"""How ``flask dbfix check`` builds its report: the app's engines and the uWSGI ini.

The app is inspected as loaded in this process, so the connections open now are the ones
the master would hold when it forks. :func:`build_report` lists them with the code that
opened them, audits the uWSGI ini, and lets :mod:`~flask_uwsgi_dbfix.check.findings` turn
both into findings; it never opens a connection itself.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from types import ModuleType

from flask import Flask
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from .. import _compat
from ..config import DBFixConfig
from ..engines import (
    DEFAULT_BIND_NAME,
    adopt_app_engines,
    all_engines,
    app_engines,
    is_managed,
    is_process_local,
    pool_connections,
)
from ..forkwatch import watch
from ..masking import masked_url
from ..process_wide import ENV_VAR, SwitchError, requested
from ..process_wide import is_on as process_wide_is_on
from ..unmanaged import UNMANAGED, connected_unmanaged_engines
from .budget import compute as compute_budget
from .budget import server_limits
from .findings import find
from .report import (
    DEFAULT_INI,
    AppMatch,
    BudgetOptions,
    CheckReport,
    EngineReport,
    PreforkConnection,
    UwsgiReport,
    short_path,
)
from .uwsgi_ini import (
    AUTO_MODULE,
    ServedApp,
    UwsgiIni,
    UwsgiSettings,
    read_ini,
    settings_from_ini,
)

__all__ = ["build_report", "ini_switches_process_wide", "resolve_ini"]


def resolve_ini(
    ini_path: str | os.PathLike[str] | None, default_ini: str | os.PathLike[str] = DEFAULT_INI
) -> tuple[UwsgiIni | None, str]:
    """The ini to audit and where it came from: ``named``, ``default`` (``default_ini``
    exists) or ``none``. Raises :class:`~flask_uwsgi_dbfix.check.uwsgi_ini.IniError`."""
    if ini_path is not None:
        return read_ini(ini_path), "named"
    if os.path.isfile(default_ini):
        return read_ini(default_ini), "default"
    return None, "none"


def ini_switches_process_wide(ini: UwsgiIni | None) -> bool:
    """Would the master run with the process-wide mode on (an ``import`` of
    ``flask_uwsgi_dbfix.auto``, not switched off by the ini's ``env`` or this environment)?
    A misspelt value counts as off: uWSGI would stop (reported as an error)."""
    return ini is not None and _ini_process_wide(settings_from_ini(ini))[0]


def _ini_process_wide(settings: UwsgiSettings) -> tuple[bool, str | None, str | None]:
    """(on, the switch's error, where it is switched off) for the ini's import line and
    ``FLASK_UWSGI_DBFIX`` (the ini's ``env =`` wins over this environment, as in uWSGI)."""
    if settings.process_wide is None:
        return False, None, None
    env_line = settings.process_wide_env
    if env_line is not None:
        value = (env_line.value or "").partition("=")[2]
        where = f"{short_path(env_line.file)}:{env_line.lineno}: env = {ENV_VAR}={value}"
    else:
        value = os.environ.get(ENV_VAR, "")
        where = f"{ENV_VAR}={value} in this environment"
    try:
        on = requested({ENV_VAR: value})
    except SwitchError as exc:
        return False, f"{where}: {exc}", None
    return on, None, None if on else where


def build_report(
    app: object,
    ini_path: str | os.PathLike[str] | None = None,
    *,
    app_import_path: str | None = None,
    default_ini: str | os.PathLike[str] = DEFAULT_INI,
    scan_process: bool = False,
    command: str = "flask dbfix check",
    budget: BudgetOptions | None = None,
) -> CheckReport:
    """Inspect ``app`` as loaded in this process and the uWSGI ini that will serve it.

    ``app`` is a Flask app, or any WSGI app (``python -m flask_uwsgi_dbfix check``).
    ``ini_path`` names the ini (``path`` or ``path:section``); ``None`` uses
    ``default_ini`` when that file exists and audits no ini otherwise. ``scan_process``:
    also report engines nobody manages, found among the process's live objects (a fresh
    process only: another test's engines would be found too). Raises
    :class:`~flask_uwsgi_dbfix.check.uwsgi_ini.IniError` when the ini cannot be used.
    """
    ini, ini_source = resolve_ini(ini_path, default_ini)
    engines, prefork = _inspect_engines(app, scan_process)
    uwsgi = _uwsgi_report(ini, app, app_import_path) if ini is not None else None
    process_wide, switch_error, switched_off = _process_wide(uwsgi)
    config = _config(app)
    flask_app = isinstance(app, Flask)
    report = CheckReport(
        app_name=app.name if isinstance(app, Flask) else (app_import_path or type(app).__name__),
        app_import_path=app_import_path,
        pid=os.getpid(),
        config=config if config is not None or process_wide is None else DBFixConfig(),
        engines=engines,
        prefork=prefork,
        uwsgi=uwsgi,
        ini_source=ini_source,
        process_wide=process_wide,
        process_wide_error=switch_error,
        process_wide_off=switched_off,
        command=command,
        flask_app=flask_app,
        extension_initialised=config is not None,
        pid_guard_fallback=any(e.managed for e in engines) and watch().page is None,
    )
    budget = budget or BudgetOptions()
    limits = server_limits(_engines_of(app)) if budget.from_server else None
    settings = uwsgi.settings if uwsgi is not None else None
    report = dataclasses.replace(
        report, budget=compute_budget(engines, prefork, settings, budget, limits)
    )
    return dataclasses.replace(report, findings=find(report))


def _engines_of(app: object) -> list[Engine]:
    """The live engines the report describes (to ask their servers for their limits)."""
    found = [m.engine for m in (app_engines(app) if isinstance(app, Flask) else all_engines())]
    if isinstance(app, Flask):
        found += [e for e in _compat.flask_sqlalchemy_engines(app).values() if e not in found]
    return found


def _process_wide(uwsgi: UwsgiReport | None) -> tuple[str | None, str | None, str | None]:
    """(how the process-wide mode is on, or ``None``; what is wrong with its switch; where
    it is switched off)."""
    on, error, off = _ini_process_wide(uwsgi.settings) if uwsgi is not None else (False, None, None)
    if on and uwsgi is not None and uwsgi.settings.process_wide is not None:
        line = uwsgi.settings.process_wide
        return f"{short_path(line.file)}:{line.lineno}: {line.key} = {AUTO_MODULE}", error, off
    if "flask_uwsgi_dbfix.process_wide" in sys.modules and process_wide_is_on():
        live = "switched on in this process (dbfix-run, or an import of " + AUTO_MODULE + ")"
        return live, error, off
    return None, error, off


# -- the app's engines -----------------------------------------------------------------


def _config(app: object) -> DBFixConfig | None:
    if not isinstance(app, Flask):
        return None
    state = app.extensions.get("dbfix")
    config = getattr(state, "config", None)
    return config if isinstance(config, DBFixConfig) else None


def _inspect_engines(
    app: object, scan_process: bool = False
) -> tuple[tuple[EngineReport, ...], tuple[PreforkConnection, ...]]:
    engines: list[EngineReport] = []
    prefork: list[PreforkConnection] = []
    if isinstance(app, Flask):
        _compat.create_flask_sqlalchemy_engines(app)
        adopt_app_engines()  # engines Flask-SQLAlchemy made but nothing connected yet
        managed = app_engines(app)
        fsa = _compat.flask_sqlalchemy_engines(app)
        unmanaged = [(DEFAULT_BIND_NAME if k is None else k, e) for k, e in fsa.items()]
    else:
        managed, unmanaged = all_engines(), []
    for m in managed:
        opened = m.open_connections()
        described = _engine_report(m.name, m.source, m.engine, len(opened), True)
        engines.append(described)
        url = described.url
        prefork += [PreforkConnection(m.name, url, c.pid, c.checked_out, c.origin) for c in opened]
    known = {id(m.engine.pool) for m in managed}
    for name, engine in unmanaged:  # the app's Flask-SQLAlchemy engines, FlaskDBFix or not
        if id(engine.pool) in known or is_process_local(engine) or is_managed(engine):
            continue
        known.add(id(engine.pool))
        opened = pool_connections(engine)
        described = _engine_report(name, "flask-sqlalchemy", engine, len(opened), False)
        engines.append(described)
        url = described.url
        prefork += [PreforkConnection(name, url, c.pid, c.checked_out, c.origin) for c in opened]
    if scan_process:  # every other engine holding connections, as assert_fork_safe finds them
        for found in connected_unmanaged_engines():
            if id(found.engine.pool) in known:
                continue
            described = _engine_report(
                found.name, UNMANAGED, found.engine, len(found.connections), False
            )
            engines.append(described)
            url = described.url
            prefork += [
                PreforkConnection(found.name, url, c.pid, c.checked_out, c.origin)
                for c in found.connections
            ]
    return tuple(engines), tuple(prefork)


def _engine_report(
    name: str, source: str, engine: Engine, opened: int, managed: bool
) -> EngineReport:
    pool = engine.pool
    size = pool.size() if isinstance(pool, QueuePool) else None
    overflow = _compat.max_overflow(pool) if isinstance(pool, QueuePool) else None
    return EngineReport(
        name=name,
        source=source,
        url=masked_url(engine),
        dialect=engine.dialect.name,
        driver=str(engine.dialect.driver),
        pool_class=type(pool).__name__,
        pool_size=size,
        max_overflow=overflow,
        open_connections=opened,
        managed=managed,
        prepares_statements=_compat.psycopg_prepares_statements(engine),
    )


# -- the uWSGI side --------------------------------------------------------------------


def _uwsgi_report(ini: UwsgiIni, app: object, app_import_path: str | None) -> UwsgiReport:
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


def _match_served(app: object, served: ServedApp, import_path: str | None) -> AppMatch:
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
