"""``flask dbfix``: the command group, light enough to load with every ``flask`` command.

Installing the package makes it a ``flask.commands`` plugin, and ``FlaskDBFix`` adds it to
the app's CLI. Loading it imports nothing beyond Click and Flask (both loaded already) and
changes nothing in the process. Running ``flask dbfix ...`` first switches on recording of
where every connection is opened (:func:`~flask_uwsgi_dbfix.stamps.record_every_pool`),
then ``flask`` loads the app, so the report names the lines that opened connections at
import; the diagnosis (:mod:`flask_uwsgi_dbfix.check`) is imported only then.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import traceback
from typing import TYPE_CHECKING, TextIO

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from .config import DEFAULT_INI, ConfigError

if TYPE_CHECKING:
    from .check.report import CheckReport

__all__ = ["BadInput", "dbfix_cli"]


class BadInput(click.ClickException):
    """Bad input: one ``Error: ...`` line on stderr and exit status 2."""

    exit_code = 2

    def format_message(self) -> str:
        from .masking import mask_passwords  # here: loading the group imports no SQLAlchemy

        return mask_passwords(super().format_message())


class _OneLineErrorCommand(click.Command):
    """Usage errors (unknown option, missing value) as one line too, exit status 2."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            raise BadInput(f"{exc.format_message()} (see --help)") from None


@click.group("dbfix", cls=AppGroup)
def dbfix_cli() -> None:
    """Check that the app is safe under uWSGI's forking workers."""
    # Runs before `flask` loads the app for the subcommand (AppGroup loads it lazily), so
    # connections the app opens while it loads are recorded with the line that opened them.
    if hasattr(os, "register_at_fork"):
        from .stamps import record_every_pool

        record_every_pool()


@dbfix_cli.command(
    "check",
    cls=_OneLineErrorCommand,
    with_appcontext=False,  # the ini is read first: it may switch on the process-wide mode
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
    ctx = click.get_current_context()
    from .check import build_report
    from .check.output import SCHEMA_VERSION
    from .check.uwsgi_ini import IniError, read_ini

    if not hasattr(os, "fork"):
        try:  # a named ini is still read: a bad one is bad input anywhere
            if ini_path is not None:
                read_ini(ini_path)
        except IniError as exc:
            raise BadInput(str(exc)) from None
        message = "this platform cannot fork: no worker can inherit a connection"
        verdict = {"status": "pass", "exit_code": 0, "strict": strict}
        nothing = {"schema_version": SCHEMA_VERSION, "can_fork": False, "message": message}
        click.echo(json.dumps(nothing | {"verdict": verdict}) if as_json else message)
        ctx.exit(0)

    from .check.inspection import ini_switches_process_wide, resolve_ini

    try:
        ini, _ = resolve_ini(ini_path)
    except IniError as exc:
        raise BadInput(str(exc)) from None
    if ini_switches_process_wide(ini):
        # As uWSGI's master would: on before the app is imported, so its engines are
        # managed and the connections it opens while it loads are named.
        from .process_wide import switch_on

        switch_on()
    info = ctx.ensure_object(ScriptInfo)
    out = sys.stdout  # the report's stream, whatever the app does to sys.stdout
    # What the app prints while it loads goes to stderr: stdout is the report (--json).
    with contextlib.redirect_stdout(sys.stderr):
        if current_app:
            app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
        else:
            app = _load_app(info)
            ctx.with_resource(app.app_context())
        try:
            # Every engine holding a connection counts, managed or not: an app's own
            # create_engine() inherits as badly (what assert_fork_safe finds too).
            report = build_report(
                app, ini_path, app_import_path=info.app_import_path, scan_process=True
            )
        except IniError as exc:
            raise BadInput(str(exc)) from None
    ctx.exit(print_report(report, out, as_json=as_json, strict=strict))


def print_report(report: CheckReport, out: TextIO, *, as_json: bool, strict: bool) -> int:
    """The report on ``out``, the report's own stream (JSON, or for people: coloured only
    for a terminal); returns the exit code."""
    from .check import exit_code
    from .check.output import render_human, report_to_json

    if as_json:
        click.echo(json.dumps(report_to_json(report, strict), indent=2), file=out)
    else:
        color = _is_tty(out)
        click.echo(render_human(report, color, strict), nl=False, color=color, file=out)
    return exit_code(report, strict)


def _load_app(info: ScriptInfo) -> Flask:
    """``flask --app``'s app, loaded here (after the ini was read). An app that fails to
    load is bad input (exit 2), with its own traceback, minus this module's frame."""
    from flask.cli import NoAppException

    try:
        return info.load_app()
    except NoAppException as exc:
        raise BadInput(exc.format_message()) from None
    except ConfigError as exc:  # the app's DBFIX_* settings: one line says what to change
        raise BadInput(f"the app did not load: {exc}") from None
    except Exception as exc:
        tb = exc.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == __file__:
            tb = tb.tb_next
        traceback.print_exception(type(exc), exc, tb, file=sys.stderr)
        raise BadInput(f"the app did not load: {type(exc).__name__}: {exc}") from None


def _is_tty(stream: TextIO) -> bool:
    """Colour only for a terminal: piped or captured output stays plain text."""
    # The stream itself, not click.get_text_stream() (deprecated in Click 8.5): under the
    # test runner it is the captured stream, which is not a terminal.
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
