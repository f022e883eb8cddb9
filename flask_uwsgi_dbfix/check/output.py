"""A :class:`~flask_uwsgi_dbfix.check.CheckReport` for people and for machines.

:func:`render_human` fits an 80-column terminal; :func:`report_to_json` is the ``--json``
object, whose schema (version :data:`SCHEMA_VERSION`) is documented in README.md.
"""

from __future__ import annotations

import dataclasses
import os
import textwrap
from typing import Any

import click

from ..config import DBFixConfig
from ..masking import mask_passwords, mask_tree
from ..stamps import CodeLocation
from .report import (
    AppMatch,
    CheckReport,
    PreforkConnection,
    describe_origin,
    exit_code,
    plural,
    short_path,
)
from .uwsgi_ini import Unresolved, UwsgiSettings

__all__ = ["SCHEMA_VERSION", "WIDTH", "error_json", "render_human", "report_to_json", "width"]

SCHEMA_VERSION = 2
"""2: severity ``note`` (was ``info``), ``verdict.notes`` (was ``infos``), ``error`` objects."""
WIDTH = 80
"""The report's width unless ``COLUMNS`` says otherwise."""
MIN_WIDTH = 60
"""Narrower than this the option table (28 columns of names) has no room: ``COLUMNS``
below it counts as this."""

_SEVERITY_COLOR = {"error": "red", "warning": "yellow", "note": "cyan"}


def width() -> int:
    """``COLUMNS`` when it is a number (as ``ls`` and Click's help read it), else 80;
    never the terminal's size, so a report reads the same on screen and in a CI log."""
    value = os.environ.get("COLUMNS", "")
    return max(int(value), MIN_WIDTH) if value.isdecimal() else WIDTH


# -- JSON ------------------------------------------------------------------------------


def report_to_json(report: CheckReport, strict: bool = False) -> dict[str, Any]:
    """The ``--json`` object; its schema is documented in ``docs/cli.md``."""
    code = exit_code(report, strict)
    found: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "app": {
            "name": report.app_name,
            "import_path": report.app_import_path,
            "pid": report.pid,
        },
        "extension": _extension_json(report.config, report.extension_initialised)
        | {"process_wide": report.process_wide},
        "engines": [dataclasses.asdict(e) for e in report.engines],
        "prefork_connections": [_prefork_json(c) for c in report.prefork],
        "uwsgi_config": _uwsgi_json(report),
        "connection_budget": [dataclasses.asdict(b) for b in report.budget],
        "findings": [dataclasses.asdict(f) for f in report.findings],
        "verdict": {
            "status": "fail" if code else "pass",
            "exit_code": code,
            "strict": strict,
            "errors": report.count("error"),
            "warnings": report.count("warning"),
            "notes": report.count("note"),
        },
    }
    # Every string, whatever field it is in (an ini's env line, a mountpoint, a spec).
    return dict(mask_tree(found))


def _extension_json(config: DBFixConfig | None, initialised: bool) -> dict[str, Any]:
    if config is None:
        return {
            "initialised": False,
            "enabled": False,
            "prefork_warning": None,
            "pid_guard": None,
            "close_before_fork": None,
        }
    return {
        "initialised": initialised,
        "enabled": config.enabled,
        "prefork_warning": config.prefork_warning,
        "pid_guard": config.pid_guard,
        "close_before_fork": config.close_before_fork,
    }


def _origin_json(origin: CodeLocation | None) -> dict[str, Any] | None:
    if origin is None:
        return None
    found: dict[str, Any] = {
        "file": origin.filename,
        "line": origin.lineno,
        "function": origin.function,
    }
    # "via": the library frame that connected; null when it is the app's own frame.
    found["via"] = _origin_json(origin.via) if origin.via is not None else None
    return found


def _prefork_json(c: PreforkConnection) -> dict[str, Any]:
    origin = _origin_json(c.origin)
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
        "py_call_uwsgi_fork_hooks": s.py_call_uwsgi_fork_hooks,
        "max_requests": s.max_requests,
        "single_interpreter": s.single_interpreter,
        "mules": s.mules,
        "spooler_processes": s.spooler_processes,
        "forks": uwsgi.forks,
        "fork_reason": uwsgi.fork_reason,
        "served": [_served_json(m) for m in uwsgi.matches],
        "unresolved": [_unresolved_json(u) for u in uwsgi.ini.unresolved],
    }


def _served_json(m: AppMatch) -> dict[str, Any]:
    return {
        "option": m.app.option,
        "spec": mask_passwords(m.app.spec),
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
        "token": mask_passwords(u.token),
        "reason": mask_passwords(u.reason),
    }


def error_json(message: str) -> dict[str, Any]:
    """The ``--json`` object when the check stopped (bad input, an app that does not load):
    still one parseable object, with the one-line message and exit status 2."""
    return {
        "schema_version": SCHEMA_VERSION,
        "error": mask_passwords(message),
        "verdict": {"status": "error", "exit_code": 2},
    }


# -- human output ----------------------------------------------------------------------


def render_human(
    report: CheckReport, color: bool = False, strict: bool = False, columns: int = WIDTH
) -> str:
    """A short report ``columns`` wide (80 by default); ANSI colour only when ``color``."""
    out = _Writer(color, columns)
    out.heading(f"{report.command}: app '{report.app_name}' (pid {report.pid})", blank=False)
    if report.process_wide is not None:
        out.wrapped(f"process-wide mode on: {report.process_wide}", 2, "  ")
    _render_engines(out, report)
    _render_prefork(out, report)
    _render_uwsgi(out, report)
    _render_findings(out, report)
    _render_verdict(out, report, strict)
    return mask_passwords("\n".join(out.lines)) + "\n"


class _Writer:
    """Collects lines, wrapping long ones with a hanging indent."""

    def __init__(self, color: bool, columns: int = WIDTH) -> None:
        self.color = color
        self.columns = columns
        self.lines: list[str] = []

    def style(self, text: str, **kwargs: Any) -> str:
        return click.style(text, **kwargs) if self.color else text

    def bold(self, text: str) -> str:
        return self.style(text, bold=True)

    def line(self, text: str = "") -> None:
        self.lines.append(text)

    def heading(self, text: str, blank: bool = True) -> None:
        if blank:
            self.line()
        for line in textwrap.wrap(text, self.columns, break_long_words=False) or [text]:
            self.line(self.bold(line))

    def wrapped(self, text: str, indent: int, first: str = "") -> None:
        """``first`` (padded to ``indent`` visible chars) then ``text`` wrapped to fit.
        Never inside a word: a path or URL longer than a line stays whole (copyable)
        and overflows rather than be cut."""
        lines = textwrap.wrap(
            text, max(self.columns - indent, 20), break_long_words=False, break_on_hyphens=False
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
        text = f"{describe_origin(c.origin)} [{state}]"
        out.wrapped(text, width + 4, f"  {c.engine:<{width}}  ")


def _render_uwsgi(out: _Writer, report: CheckReport) -> None:
    uwsgi = report.uwsgi
    if uwsgi is None:
        out.heading("uWSGI config: none (no --ini, no ./uwsgi.ini)")
        return
    out.heading(f"uWSGI config: {short_path(uwsgi.ini.path)} [{uwsgi.ini.section}]")
    s = uwsgi.settings
    implied = f" (implied by {s.master_implied_by})" if s.master_implied_by else ""
    lazy = f" ({s.lazy_key})" if s.lazy_key else ""
    audited: list[tuple[str, bool | int | None, str, str]] = [
        ("master", s.master, "no", implied),
        ("processes", s.processes, "1 (not set)", ""),
        ("lazy-apps", s.lazy_apps, "no", lazy),
        ("enable-threads", s.enable_threads, "not set", ""),
        ("threads", s.threads, "not set", ""),
        ("py-call-osafterfork", s.py_call_osafterfork, "no", ""),
        ("py-call-uwsgi-fork-hooks", s.py_call_uwsgi_fork_hooks, "no", ""),
        ("max-requests", s.max_requests, "not set", ""),
        ("single-interpreter", s.single_interpreter, "no", ""),
    ]
    rows = [(key, _show(s, key, value, unset) + note) for key, value, unset, note in audited]
    rows.append(("forks", f"{_yes_no(uwsgi.forks)}: {uwsgi.fork_reason}"))
    rows += [
        ("serves", f"{mask_passwords(m.app.spec)} ({m.status}: {m.detail})") for m in uwsgi.matches
    ]
    for name, value in rows:
        out.wrapped(value, 28, f"  {name:<24}  ")


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
    errors = report.count("error")
    code = exit_code(report, strict)
    summary = (
        f"{plural(errors, 'error')}, {plural(report.count('warning'), 'warning')}, "
        f"{plural(report.count('note'), 'note')}"
    )
    if code:
        verdict = out.style("FAIL", fg="red", bold=True)
        why = "fix the errors" if errors else "warnings count as errors with --strict"
    elif report.count("warning"):
        verdict = out.style("OK", fg="green", bold=True)
        why = "review the warnings"
    else:
        verdict = out.style("OK", fg="green", bold=True)
        why = "nothing to fix"
    out.line()
    # Wrapped like the rest: the plain text decides where (the colour codes take no room).
    plain = f"Verdict: {'FAIL' if code else 'OK'}: {summary}; {why} (exit {code})."
    lines = textwrap.wrap(
        plain, out.columns, subsequent_indent=" " * len("Verdict: "), break_long_words=False
    ) or [plain]
    lines[0] = lines[0].replace("FAIL" if code else "OK", verdict, 1)
    out.lines.extend(lines)
