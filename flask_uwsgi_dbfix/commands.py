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
from collections.abc import Callable
from typing import TYPE_CHECKING, TextIO

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from .config import DEFAULT_INI, ConfigError

if TYPE_CHECKING:
    from .check.report import BudgetOptions, CheckReport

__all__ = [
    "BadInput",
    "JsonErrorCommand",
    "budget_options",
    "dbfix_cli",
    "describe_exception",
    "echo_error_json",
    "report_stream",
]


def budget_options(command: Callable[..., None]) -> Callable[..., None]:
    """``--db-max-connections``, ``--instances`` and ``--db-max-connections-from-server``,
    for both checks: the ``connection-budget`` finding."""
    command = click.option(
        "--db-max-connections-from-server",
        "from_server",
        is_flag=True,
        help="Connect once per database server and read the connections it allows "
        "(max_connections minus the reserved ones). Never done without this option.",
    )(command)
    command = click.option(
        "--instances",
        type=click.IntRange(min=1),
        default=1,
        show_default=True,
        metavar="N",
        help="App server instances sharing the database (each with this ini).",
    )(command)
    return click.option(
        "--db-max-connections",
        "db_max_connections",
        type=click.IntRange(min=1),
        metavar="N",
        help="Connections the database server allows this app's user; the check compares "
        "what the deployment can hold with it.",
    )(command)


class BadInput(click.ClickException):
    """Bad input: one ``Error: ...`` line on stderr and exit status 2."""

    exit_code = 2

    def format_message(self) -> str:
        from .masking import mask_passwords  # here: loading the group imports no SQLAlchemy

        return mask_passwords(super().format_message())


class JsonErrorCommand(click.Command):
    """Usage errors as Click shows them for every ``flask`` command (usage line, then
    ``Error: ...``, exit status 2); with ``--json`` among the arguments, the error object
    on standard output too, so the output always parses."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        as_json = "--json" in args  # before parsing: Click's parser consumes the list
        try:
            return super().parse_args(ctx, args)
        except click.UsageError as exc:
            if as_json:
                echo_error_json(exc.format_message(), report_stream())
            raise


def echo_error_json(message: str, out: TextIO) -> None:
    """The ``--json`` object of a check that stopped (exit status 2)."""
    from .check.output import error_json  # here: loading the group imports no SQLAlchemy

    click.echo(json.dumps(error_json(message), indent=2), file=out)


def report_stream() -> TextIO:
    """The process's real standard output for the report: an app that replaced
    ``sys.stdout`` with ``sys.stderr`` (a wsgi-file habit) before the command ran must not
    send the report (or ``--json``) to stderr. A replacement that is not stderr (a test
    runner's capture) is kept."""
    real = sys.__stdout__
    if real is not None and sys.stdout is not real and _is_stderr(sys.stdout):
        return real
    return sys.stdout


def _is_stderr(stream: TextIO) -> bool:
    if stream is sys.stderr or stream is sys.__stderr__:
        return True
    try:
        return stream.fileno() == 2
    except (AttributeError, OSError, ValueError):
        return False


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
    cls=JsonErrorCommand,
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
@budget_options
def check_command(
    ini_path: str | None,
    as_json: bool,
    strict: bool,
    db_max_connections: int | None,
    instances: int,
    from_server: bool,
) -> None:
    """Report connections the uWSGI master would hand to its workers, audit the
    uWSGI ini, and give a verdict.

    Exit status: 0 nothing to fix, 1 errors (or warnings with --strict), 2 the check
    stopped (bad input, an app that does not load).
    """
    out = report_stream()  # the report's stream, whatever the app does to sys.stdout
    try:
        from .check.report import BudgetOptions

        budget = BudgetOptions(db_max_connections, instances, from_server)
        _check(ini_path, as_json, strict, out, budget)
    except BadInput as exc:
        if as_json:
            echo_error_json(exc.format_message(), out)
        raise


def _check(
    ini_path: str | None, as_json: bool, strict: bool, out: TextIO, budget: BudgetOptions
) -> None:
    ctx = click.get_current_context()
    from .check import build_report
    from .check.budget import ServerLimitError
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
        click.echo(json.dumps(nothing | {"verdict": verdict}) if as_json else message, file=out)
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
                app,
                ini_path,
                app_import_path=info.app_import_path,
                scan_process=True,
                budget=budget,
            )
        except (IniError, ServerLimitError) as exc:
            raise BadInput(str(exc)) from None
    ctx.exit(print_report(report, out, as_json=as_json, strict=strict))


def print_report(report: CheckReport, out: TextIO, *, as_json: bool, strict: bool) -> int:
    """The report on ``out``, the report's own stream (JSON, or for people: coloured only
    for a terminal); returns the exit code."""
    from .check import exit_code
    from .check.output import render_human, report_to_json, width

    if as_json:
        click.echo(json.dumps(report_to_json(report, strict), indent=2), file=out)
    else:
        color = wants_color(out)
        text = render_human(report, color, strict, columns=width())
        click.echo(text, nl=False, color=color, file=out)
    return exit_code(report, strict)


def _load_app(info: ScriptInfo) -> Flask:
    """``flask --app``'s app, loaded here (after the ini was read). An app that fails to
    load stops the check (exit 2) with one line: what it raised and where, no traceback
    (``flask --app ... shell`` or importing it shows that)."""
    from flask.cli import NoAppException

    try:
        return info.load_app()
    except NoAppException as exc:
        # An ImportError raised inside the app's module: Flask puts its whole traceback in
        # the message ("While importing ..."); the ImportError itself, on one line, says
        # the same. (Flask's own test: a frame beyond its import call.)
        raised = exc.__cause__ or exc.__context__
        tb = raised.__traceback__ if raised is not None else None
        if raised is not None and tb is not None and tb.tb_next is not None:
            raise BadInput(did_not_load(raised)) from None
        raise BadInput(did_not_load(exc)) from None
    except ConfigError as exc:  # the app's DBFIX_* settings: one line says what to change
        raise BadInput(f"the app did not load: {exc}") from None
    except Exception as exc:
        raise BadInput(did_not_load(exc)) from None


def did_not_load(exc: BaseException) -> str:
    """``the app did not load: RuntimeError: ... (raised at app.py:3)``."""
    return f"the app did not load: {describe_exception(exc)}"


def describe_exception(exc: BaseException) -> str:
    """The exception and the innermost frame that raised it, on one line (masked when
    printed): enough to find it, without a traceback in a CI log."""
    if isinstance(exc, click.ClickException):
        return " ".join(exc.format_message().split())
    text = " ".join(str(exc).split())  # one line, whatever the message holds
    message = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    if tb is None:
        return message
    from .stamps import short_path

    return f"{message} (raised at {short_path(tb.tb_frame.f_code.co_filename)}:{tb.tb_lineno})"


def wants_color(stream: TextIO) -> bool:
    """``NO_COLOR`` (any value) never, ``FORCE_COLOR`` always (no-color.org,
    force-color.org), otherwise only for a terminal."""
    if os.environ.get("NO_COLOR"):
        return False
    return bool(os.environ.get("FORCE_COLOR")) or _is_tty(stream)


def _is_tty(stream: TextIO) -> bool:
    """Colour only for a terminal: piped or captured output stays plain text."""
    # The stream itself, not click.get_text_stream() (deprecated in Click 8.5): under the
    # test runner it is the captured stream, which is not a terminal.
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())
