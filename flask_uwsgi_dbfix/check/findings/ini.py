"""Rules about the audited uWSGI ini: how uWSGI forks, its workers, the apps it serves,
and the values it would read differently from what was meant."""

from __future__ import annotations

import functools
import importlib.util
import os
import sys
from collections.abc import Callable

from ...masking import mask_passwords
from ..report import CheckReport, EngineReport, Finding, UwsgiReport, plural, short_path
from ..uwsgi_ini import ServedApp, Unresolved, UwsgiIni

__all__ = [
    "enable_threads",
    "inline_comments",
    "lazy_apps",
    "max_requests",
    "misspelt_options",
    "multiple_interpreters",
    "no_master",
    "no_uwsgi_ini",
    "osafterfork_kills_workers",
    "py_call_osafterfork",
    "py_call_uwsgi_fork_hooks",
    "pyuwsgi_venv_python",
    "pyuwsgi_venv_reload",
    "served_app",
    "single_worker",
    "threads_exceed_pool",
    "unresolved_values",
]

IniRule = Callable[[CheckReport, UwsgiReport], list[Finding]]


def about_the_ini(rule: IniRule) -> Callable[[CheckReport], list[Finding]]:
    """Make ``rule(report, uwsgi)`` a rule: it finds nothing when no ini is audited."""

    @functools.wraps(rule)
    def checked(report: CheckReport) -> list[Finding]:
        return [] if report.uwsgi is None else rule(report, report.uwsgi)

    return checked


def no_uwsgi_ini(report: CheckReport) -> list[Finding]:
    """``no-uwsgi-ini``: without an ini, the findings assume uWSGI forks."""
    if report.uwsgi is not None:
        return []
    return [
        Finding(
            "no-uwsgi-ini",
            "note",
            "No uWSGI ini audited (no --ini and no ./uwsgi.ini); assuming uWSGI loads "
            "the app in its master and forks the workers.",
            "Pass --ini PATH to audit the config uWSGI will run with.",
        )
    ]


# -- how uWSGI forks -------------------------------------------------------------------


@about_the_ini
def no_master(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``no-master``: the post-fork hook needs the master."""
    s = uwsgi.settings
    if s.master is not False:
        return []
    forking = s.processes is not None and s.processes > 1
    return [
        Finding(
            "no-master",
            "warning" if forking else "note",
            "No master process: uwsgidecorators.postfork needs it, so the extension "
            "falls back to chaining uwsgi.post_fork_hook and to its pid guard.",
            "Set master = true.",
            _ini_location(uwsgi.ini, "master"),
        )
    ]


@about_the_ini
def lazy_apps(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``lazy-apps``: correct, but not needed with the fix."""
    s = uwsgi.settings
    if not s.lazy_apps:
        return []
    return [
        Finding(
            "lazy-apps",
            "note",
            f"{s.lazy_key} is on: every worker loads the app itself, so nothing is "
            "inherited. Correct, but it costs memory (no copy-on-write sharing) and "
            "start-up time; not needed with the fix.",
            None,
            _ini_location(uwsgi.ini, s.lazy_key or "lazy-apps"),
        )
    ]


def osafterfork_kills_workers() -> bool:
    """Python 3.13: uWSGI 2.0.30's py-call-osafterfork aborts every worker at start
    (measured on 3.13.0; a hello-world app does the same)."""
    return sys.version_info >= (3, 13)


@about_the_ini
def py_call_osafterfork(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``py-call-osafterfork``: fine before Python 3.13, fatal on it."""
    if not uwsgi.settings.py_call_osafterfork:
        return []
    where = _ini_location(uwsgi.ini, "py-call-osafterfork")
    if osafterfork_kills_workers():
        return [
            Finding(
                "py-call-osafterfork",
                "error",
                f"py-call-osafterfork is on and this is Python {sys.version.split()[0]}: uWSGI "
                "2.0.30 kills every worker at start with it on Python 3.13 ('Fatal Python "
                "error: _PyRecursiveMutex_Unlock'), even for a hello-world app.",
                "Remove py-call-osafterfork and set py-call-uwsgi-fork-hooks = true, which "
                "works on Python 3.13 and also runs the after-fork hooks in workers.",
                where,
            )
        ]
    return [
        Finding(
            "py-call-osafterfork",
            "note",
            "py-call-osafterfork is on: os.register_at_fork hooks run in workers, so "
            "the extension's os-level hook drops inherited connections too.",
            None,
            where,
        )
    ]


def mounts_crash_with_fork_hooks(uwsgi: UwsgiReport) -> bool:
    """uWSGI 2.0.30 (pyuwsgi) segfaults at start-up, before it serves anything, with
    ``mount`` and ``py-call-uwsgi-fork-hooks`` together (measured with a hello-world app;
    ``module =`` with the same option works)."""
    return bool(uwsgi.settings.py_call_uwsgi_fork_hooks) and any(
        a.option == "mount" for a in uwsgi.settings.served
    )


@about_the_ini
def py_call_uwsgi_fork_hooks(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``py-call-uwsgi-fork-hooks``: the master closes idle connections before forking."""
    if not uwsgi.settings.py_call_uwsgi_fork_hooks:
        return []
    where = _ini_location(uwsgi.ini, "py-call-uwsgi-fork-hooks")
    if mounts_crash_with_fork_hooks(uwsgi):
        return [
            Finding(
                "py-call-uwsgi-fork-hooks",
                "error",
                "py-call-uwsgi-fork-hooks is on and the app is loaded with mount: uWSGI "
                "2.0.30 segfaults at start-up with both (measured, even for a hello-world "
                "app), before it serves a request.",
                "Load the app with module = (or wsgi-file =) instead of mount, or remove "
                "py-call-uwsgi-fork-hooks.",
                where,
            )
        ]
    config = report.config
    if config is not None and config.enabled and config.close_before_fork:
        effect = "where the extension closes its idle connections (DBFIX_CLOSE_BEFORE_FORK)"
    else:
        effect = "where the extension would close its idle connections, were it on"
    return [
        Finding(
            "py-call-uwsgi-fork-hooks",
            "note",
            "py-call-uwsgi-fork-hooks is on: the master runs os.register_at_fork hooks "
            f"before each worker fork, {effect}, and workers run their after-fork hooks.",
            None,
            where,
        )
    ]


def pyuwsgi_venv_python() -> str | None:
    """The virtualenv's python when ``uwsgi`` here is pyuwsgi's script in a virtualenv
    (``pip install pyuwsgi``: a Python script, not uWSGI's own binary); else ``None``."""
    if sys.prefix == sys.base_prefix or importlib.util.find_spec("pyuwsgi") is None:
        return None
    script = os.path.join(sys.prefix, "bin", "uwsgi")
    try:
        with open(script, "rb") as file:
            head = file.read(4096)
    except OSError:
        return None
    if not head.startswith(b"#!") or b"pyuwsgi" not in head:
        return None  # uWSGI's compiled binary re-executes itself fine
    return os.path.join(sys.prefix, "bin", "python")


@about_the_ini
def pyuwsgi_venv_reload(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``pyuwsgi-venv-reload``: uWSGI reloads by re-executing its binary, which for pyuwsgi
    is the interpreter behind the virtualenv's symlink (``/proc/self/exe``): the base
    Python, without the virtualenv, cannot import pyuwsgi and the server dies. Measured
    with pyuwsgi 2.0.30: ``binary-path = <venv>/bin/python`` reloads; ``<venv>/bin/uwsgi``
    (the script) does not."""
    python = pyuwsgi_venv_python()
    if python is None or uwsgi.ini.last("binary-path") is not None:
        return []
    if os.environ.get("UWSGI_BINARY_PATH"):  # uWSGI reads every option from UWSGI_<NAME>
        return []
    if any(item.key == "binary-path" for item in uwsgi.ini.unresolved):
        return []  # set under a condition or a placeholder: uWSGI decides, not guessed
    base = os.path.realpath(python)
    return [
        Finding(
            "pyuwsgi-venv-reload",
            "warning",
            f"uwsgi here is pyuwsgi's script in the virtualenv {sys.prefix} and the ini sets "
            "no binary-path: on a reload (SIGHUP, touch-reload, a graceful restart) uWSGI "
            f"re-executes {base}, which is outside the virtualenv and cannot import "
            "pyuwsgi, so the whole server goes down.",
            f"Add binary-path = {python} to the ini (the virtualenv's python, not its "
            "uwsgi script), or set UWSGI_BINARY_PATH to it where uWSGI starts.",
        )
    ]


# -- the workers -----------------------------------------------------------------------


@about_the_ini
def single_worker(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``single-worker``: no two workers to share a connection."""
    s = uwsgi.settings
    if not (s.processes_set is False or s.processes in (0, 1)):
        return []
    respawn = " (a respawned worker is forked again)" if s.master else ""
    return [
        Finding(
            "single-worker",
            "note",
            "processes is not set or 1: uWSGI runs a single worker, so no two "
            f"workers share a connection{respawn}.",
            None,
            _ini_location(uwsgi.ini, "processes", "workers"),
        )
    ]


@about_the_ini
def max_requests(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``max-requests``: every recycled worker is a new fork."""
    s = uwsgi.settings
    if not s.max_requests:
        return []
    return [
        Finding(
            "max-requests",
            "note",
            f"max-requests = {s.max_requests}: workers are recycled and every new one "
            "is forked from the master again; the fix's post-fork hook runs in each.",
            None,
            _ini_location(uwsgi.ini, "max-requests"),
        )
    ]


@about_the_ini
def enable_threads(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``enable-threads``: off means no Python threads before uWSGI 2.0.27."""
    if uwsgi.settings.enable_threads is not False:
        return []
    return [
        Finding(
            "enable-threads",
            "note",
            "enable-threads is off: uWSGI before 2.0.27 then runs no Python threads "
            "(2.0.27 and later enable them anyway).",
            None,
            _ini_location(uwsgi.ini, "enable-threads"),
        )
    ]


@about_the_ini
def threads_exceed_pool(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``threads-exceed-pool``: more threads per worker than an engine's pool holds."""
    threads = uwsgi.settings.threads or 1
    return [
        Finding(
            "threads-exceed-pool",
            "warning",
            f"threads = {threads} per worker but engine '{engine.name}' pools at "
            f"most {_capacity(engine)} connections: requests will wait for a connection.",
            "Raise pool_size/max_overflow (SQLALCHEMY_ENGINE_OPTIONS) to at least "
            "the thread count.",
        )
        for engine in report.engines
        if engine.pool_size is not None and threads > _capacity(engine)
    ]


def _capacity(engine: EngineReport) -> int:
    return (engine.pool_size or 0) + max(engine.max_overflow or 0, 0)


@about_the_ini
def multiple_interpreters(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``multiple-interpreters``: uWSGI calls ``uwsgi.post_fork_hook`` (what
    ``uwsgidecorators.postfork`` sets) only in the main interpreter
    (``uwsgi_python_post_fork``); apps in sub-interpreters never see it."""
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


# -- the app it serves -----------------------------------------------------------------


@about_the_ini
def served_app(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``no-app-in-ini``, ``app-unconfirmed``, ``app-mismatch``: is the app uWSGI serves
    the one checked here?"""
    if not uwsgi.settings.served:
        if "module" in uwsgi.settings.unresolved_options:
            return []
        return [
            Finding(
                "no-app-in-ini",
                "note",
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
        return [Finding("app-unconfirmed", "note", f"Could not confirm: {details}.", None, where)]
    specs = ", ".join(m.app.spec for m in uwsgi.matches)
    return [
        Finding(
            "app-mismatch",
            "warning",
            f"The ini serves {specs}, not the app checked here: {details}.",
            "Check what uWSGI serves: python -m flask_uwsgi_dbfix check --ini "
            f"{_ini_spec(uwsgi)} (loads it as uWSGI's master does, Flask app or middleware), "
            f"or flask --app {_flask_spec(uwsgi.matches[0].app)} dbfix check if it is a Flask app",
            where,
        )
    ]


def _ini_spec(uwsgi: UwsgiReport) -> str:
    path = short_path(uwsgi.ini.path)
    return path if uwsgi.ini.section == "uwsgi" else f"{path}:{uwsgi.ini.section}"


def _flask_spec(app: ServedApp) -> str:
    if app.module is not None:
        return f"{app.module}:{app.callable}"
    return f"{app.file}:{app.callable}" if app.file else app.spec


# -- values read differently from what was meant ---------------------------------------


@about_the_ini
def unresolved_values(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``ini-unresolved``: a warning for each value that decides how the app is forked,
    one info line for all the others."""
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
                "note",
                f"{plural(len(rest), 'other value')} cannot be resolved without running uWSGI "
                f"(options: {mask_passwords(keys)}); none of them decides how the app is forked.",
            )
        )
    return found


@about_the_ini
def inline_comments(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``ini-inline-comment``: uWSGI keeps ``# ...`` after a value as part of it."""
    return [
        Finding(
            "ini-inline-comment",
            "warning",
            f"'{option.key} = {mask_passwords(option.value or '')}': uWSGI has no inline "
            "comments, the whole text after '=' is the value.",
            "Put the comment on its own line.",
            _file_line(option.file, option.lineno),
        )
        for option in uwsgi.settings.inline_comments
    ]


@about_the_ini
def misspelt_options(report: CheckReport, uwsgi: UwsgiReport) -> list[Finding]:
    """``ini-misspelt-option``: uWSGI ignores an option it does not know, silently."""
    return [
        Finding(
            "ini-misspelt-option",
            "warning",
            f"'{written}' is not a uWSGI option; uWSGI ignores it silently.",
            f"Write '{meant}'.",
            _ini_location(uwsgi.ini, written),
        )
        for written, meant in uwsgi.settings.misspelt
    ]


def _ini_location(ini: UwsgiIni, *keys: str) -> str | None:
    """Where the option that wins among ``keys`` is set, when it is."""
    option = ini.last(*keys)
    return _file_line(option.file, option.lineno) if option else None


def _file_line(file: str, lineno: int) -> str:
    return f"{short_path(file)}:{lineno}"
