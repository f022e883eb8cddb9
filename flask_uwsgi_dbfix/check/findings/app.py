"""Rules about the app: its engines, the connections it opened while loading, the fix."""

from __future__ import annotations

from collections import Counter

from ...unmanaged import UNMANAGED
from ..report import UNKNOWN_ORIGIN, CheckReport, Finding, Severity, describe_origin, plural

__all__ = [
    "checked_out_at_fork",
    "fix_disabled",
    "no_engines",
    "pid_guard_fallback",
    "prefork_connections",
    "process_wide",
]

AUTO_MODULE = "flask_uwsgi_dbfix.auto"

_FORK_HOOKS_FIX = (
    "Or set py-call-uwsgi-fork-hooks = true in the uWSGI ini (uWSGI 2.0.21+): the "
    "master then closes its idle connections itself before each fork."
)


def no_engines(report: CheckReport) -> list[Finding]:
    """``no-engines``: nothing to inherit."""
    if report.engines:
        return []
    return [
        Finding(
            "no-engines",
            "note",
            "No engine for this app (in-memory SQLite is left alone: a fork copies "
            "it safely); nothing can be inherited.",
        )
    ]


def prefork_connections(report: CheckReport) -> list[Finding]:
    """``prefork-connection``: one finding per engine and code location that opened
    connections before the fork, as bad as what the workers would do with them."""
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
        location = None if where == UNKNOWN_ORIGIN else where
        if closes and forks is not False:
            found.append(
                Finding(
                    "prefork-connection",
                    "note",
                    opened + "The master closes it before forking (py-call-uwsgi-fork-hooks "
                    "with DBFIX_CLOSE_BEFORE_FORK): workers inherit nothing.",
                    None,
                    location,
                )
            )
            continue
        severity = _prefork_severity(report, engine, forks)
        managed = _is_managed(report, engine)
        fix = (
            "Open no connection while the app is created (move the query into a "
            "request handler or a CLI command), or call engine.dispose() once that "
            "start-up work is done."
        )
        if not managed and _is_unmanaged_extra(report, engine):
            fix = _manage_fix(engine) + " Or: " + fix[0].lower() + fix[1:]
        elif severity != "note" and not held and _fork_hooks_would_help(report):
            # An app under the process-wide mode is usually one you cannot edit: the ini
            # line comes first then.
            fix = (
                "Set" + _FORK_HOOKS_FIX.removeprefix("Or set") + " Or, if you can change the "
                "app: " + fix[0].lower() + fix[1:]
                if report.process_wide is not None
                else fix + " " + _FORK_HOOKS_FIX
            )
        found.append(
            Finding(
                "prefork-connection",
                severity,
                opened + _prefork_consequence(report, forks, managed),
                fix,
                location,
            )
        )
    return found


def checked_out_at_fork(report: CheckReport) -> list[Finding]:
    """``checked-out-at-fork``: a connection something still holds when the master forks."""
    return [
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


def process_wide(report: CheckReport) -> list[Finding]:
    """``process-wide``: the mode is on (every engine managed), or its switch is broken."""
    if report.process_wide_error is not None:
        return [
            Finding(
                "process-wide-switch",
                "error",
                f"{report.process_wide_error}: the server stops at start-up.",
                "Set FLASK_UWSGI_DBFIX to on or off, or remove it.",
            )
        ]
    if report.process_wide is None:
        return []
    return [
        Finding(
            "process-wide",
            "note",
            f"The process-wide mode is on ({report.process_wide}): every SQLAlchemy engine "
            "the process makes is fork-safe, without FlaskDBFix.",
        )
    ]


def fix_disabled(report: CheckReport) -> list[Finding]:
    """``fix-disabled``: FlaskDBFix missing or turned off, an error when it matters now."""
    config = report.config
    if report.process_wide is not None or (config is not None and config.enabled):
        return []
    if report.engines and all(e.managed for e in report.engines):
        return []  # register() covers every engine there is
    if not report.flask_app:
        what = "No engine of this app is managed by flask-uwsgi-dbfix"
    elif config is None:
        what = "FlaskDBFix is not initialised on this app"
    else:
        what = "The fix is disabled (DBFIX_ENABLED=False)"
    unmanaged = [c for c in report.prefork if not _is_managed(report, c.engine)]
    inherits = bool(unmanaged) and _forks(report) is not False
    if inherits:
        now = ", and this app has some."
    elif report.prefork:
        now = "; harmless with this uWSGI config."
    else:
        now = "; none would be inherited now."
    switch = (
        f"or, without changing the app's code, add `import = {AUTO_MODULE}` to the uWSGI "
        "ini (or start the server under dbfix-run)."
    )
    if report.process_wide_off is not None:
        what += f" (the process-wide mode is switched off: {report.process_wide_off})"
        switch = f"or remove {report.process_wide_off.split(': ')[-1]}."
    no_fsa = not any(e.source == "flask-sqlalchemy" for e in report.engines)
    if report.flask_app and config is None and no_fsa and report.engines:
        what += " (and it would find no Flask-SQLAlchemy engine to manage)"
    if not report.flask_app or (config is None and no_fsa and report.engines):
        fix = f"Call flask_uwsgi_dbfix.register(engine) for each engine, {switch}"
    elif config is None:
        fix = f"Call FlaskDBFix(app), {switch}"
    else:
        fix = "Remove DBFIX_ENABLED=False."
    return [
        Finding(
            "fix-disabled",
            "error" if inherits else "note",
            f"{what}: workers keep connections inherited from the master{now}",
            fix,
        )
    ]


def _forks(report: CheckReport) -> bool | None:
    """Would the workers inherit the app's connections? Without an ini, assume so."""
    return True if report.uwsgi is None else report.uwsgi.forks


def _prefork_severity(report: CheckReport, engine: str, forks: bool | None) -> Severity:
    """Error only when workers would really share the socket: the fix makes each worker
    drop its copy of a managed engine's connections, leaving a wasted idle one."""
    if forks is False:
        return "note"
    return "warning" if _is_managed(report, engine) or forks is None else "error"


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


def _fork_hooks_would_help(report: CheckReport) -> bool:
    """Only the extension closes the master's connections before forking (and uWSGI 2.0.30
    crashes with the option when the app is mounted)."""
    uwsgi, config = report.uwsgi, report.config
    on = config is not None and config.enabled and config.close_before_fork
    mounted = uwsgi is not None and any(a.option == "mount" for a in uwsgi.settings.served)
    return on and not mounted and (uwsgi is None or not uwsgi.settings.py_call_uwsgi_fork_hooks)


def _is_managed(report: CheckReport, engine: str) -> bool:
    return any(e.name == engine and e.managed for e in report.engines)


def _is_unmanaged_extra(report: CheckReport, engine: str) -> bool:
    """Found among the process's objects: neither the app's Flask-SQLAlchemy engine nor
    one the package manages."""
    return any(e.name == engine and e.source == UNMANAGED for e in report.engines)


def _manage_fix(engine: str) -> str:
    """How to have the package manage an engine the app keeps itself."""
    target = "engine" if engine.startswith(UNMANAGED) else engine
    return (
        f"Call flask_uwsgi_dbfix.register({target}) once it is created, or, "
        f"without changing the app's code, add `import = {AUTO_MODULE}` to the uWSGI ini "
        "(or start the server under dbfix-run): the process-wide mode manages every engine."
    )


def _prefork_consequence(report: CheckReport, forks: bool | None, managed: bool) -> str:
    if forks is False:
        reason = report.uwsgi.fork_reason if report.uwsgi else ""
        return f"Harmless with this config ({reason})."
    if forks is None:
        return "Could not tell whether uWSGI forks with it."
    if managed:
        return (
            "Every worker inherits the socket; the fix makes each worker drop its copy, "
            "but the master keeps a server connection open for nothing."
        )
    return (
        "Every worker inherits the same socket: expect 'SSL error: decryption failed "
        "or bad record mac' and similar errors."
    )


def pid_guard_fallback(report: CheckReport) -> list[Finding]:
    """``pid-guard-fallback``: correct, slower; said so the operator is not surprised."""
    if not report.pid_guard_fallback:
        return []
    from ...forkwatch import FALLBACK_NOTE

    return [
        Finding("pid-guard-fallback", "note", FALLBACK_NOTE[0].upper() + FALLBACK_NOTE[1:] + ".")
    ]
