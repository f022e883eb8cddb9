"""``flask dbfix``: the command group :class:`~flask_uwsgi_dbfix.FlaskDBFix` adds to the app.

``flask --app APP dbfix check`` loads the app exactly as ``flask`` does, so the database
connections that are open when the command starts are the ones uWSGI's master would
hold when it forks. The command is glue: :func:`~flask_uwsgi_dbfix.check.build_report`
does the work and :mod:`flask_uwsgi_dbfix.check.output` prints it.
"""

from __future__ import annotations

import json
import sys

import click
from flask import Flask, current_app
from flask.cli import AppGroup, ScriptInfo

from .inspection import build_report
from .output import render_human, report_to_json
from .report import DEFAULT_INI, exit_code
from .uwsgi_ini import IniError

__all__ = ["dbfix_cli"]


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
    ctx = click.get_current_context()
    info = ctx.find_object(ScriptInfo)
    try:
        report = build_report(app, ini_path, app_import_path=info.app_import_path if info else None)
    except IniError as exc:
        raise BadInput(str(exc)) from None
    if as_json:
        click.echo(json.dumps(report_to_json(report, strict), indent=2))
    else:
        color = _stdout_is_tty()
        click.echo(render_human(report, color, strict), nl=False, color=color)
    ctx.exit(exit_code(report, strict))


def _stdout_is_tty() -> bool:
    """Colour only for a terminal: piped or captured output stays plain text."""
    # sys.stdout, not click.get_text_stream() (deprecated in Click 8.5): under the test
    # runner it is the captured stream, which is not a terminal.
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty is not None and isatty())
