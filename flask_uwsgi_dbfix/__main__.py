"""``python -m flask_uwsgi_dbfix``: the check for any WSGI app, and ``run`` (``dbfix-run``).

``check`` is ``flask dbfix check`` for an app that is not (or not only) a Flask app, e.g. a
Pyramid or plain WSGI app with ``create_engine``: it loads the app the ini serves (or
``--app``), as uWSGI's master would, and reports every engine holding a connection,
managed or not.
"""

from __future__ import annotations

import configparser
import contextlib
import importlib
import importlib.util
import os
import sys
from types import ModuleType
from typing import TYPE_CHECKING, Any, TextIO

import click

from .commands import (
    BadInput,
    JsonErrorCommand,
    budget_options,
    describe_exception,
    echo_error_json,
    print_report,
    report_stream,
)
from .config import DEFAULT_INI

if TYPE_CHECKING:
    from .check.report import BudgetOptions
    from .check.uwsgi_ini import UwsgiIni

__all__ = ["main"]


@click.group()
def main() -> None:
    """flask-uwsgi-dbfix: fork safety for SQLAlchemy apps under pre-forking servers."""


@main.command("check", cls=JsonErrorCommand)
@click.option(
    "--ini",
    "ini_path",
    metavar="PATH[:SECTION]",
    help=f"uWSGI ini file to audit (default: ./{DEFAULT_INI} when present).",
)
@click.option(
    "--app",
    "app_spec",
    metavar="MODULE[:CALLABLE]|FILE.py|paste:INI",
    help="The app to load (default: the one the ini serves); CALLABLE defaults to "
    "'application', as in uWSGI; 'factory()' calls it; paste:INI loads a PasteDeploy ini.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead.")
@click.option("--strict", is_flag=True, help="Exit 1 on warnings too (for CI).")
@budget_options
def check_command(
    ini_path: str | None,
    app_spec: str | None,
    as_json: bool,
    strict: bool,
    db_max_connections: int | None,
    instances: int,
    from_server: bool,
) -> None:
    """Load the app as uWSGI's master would, report the connections its workers would
    inherit and whether anything makes them safe, audit the ini, and give a verdict.

    Exit status: 0 nothing to fix, 1 errors (or warnings with --strict), 2 the check
    stopped (bad input, an app that does not load).
    """
    out = report_stream()  # the report's stream, whatever the app does to sys.stdout
    try:
        from .check.report import BudgetOptions

        budget = BudgetOptions(db_max_connections, instances, from_server)
        _check(ini_path, app_spec, as_json, strict, out, budget)
    except BadInput as exc:
        if as_json:
            echo_error_json(exc.format_message(), out)
        raise


def _check(
    ini_path: str | None,
    app_spec: str | None,
    as_json: bool,
    strict: bool,
    out: TextIO,
    budget: BudgetOptions,
) -> None:
    ctx = click.get_current_context()
    if not hasattr(os, "register_at_fork"):
        click.echo("this platform cannot fork: no worker can inherit a connection", file=out)
        ctx.exit(0)
    from .check.budget import ServerLimitError
    from .check.inspection import build_report, ini_switches_process_wide, resolve_ini
    from .check.uwsgi_ini import IniError, settings_from_ini
    from .stamps import record_every_pool

    try:
        ini, _ = resolve_ini(ini_path)
    except IniError as exc:
        raise BadInput(str(exc)) from None
    if app_spec is None:
        served = settings_from_ini(ini).served if ini is not None else ()
        app_spec = _paste_spec(ini) if ini is not None and not served else None
        app_spec = app_spec or _served_spec(served)
    if ini is not None:  # paths first: the ini's chdir changes what relative ones mean
        ini_path = os.path.abspath(ini.path if ini_path is None else ini_path)
        _enter_ini_paths(ini)
    record_every_pool()  # before the app loads: its connections are named
    if ini_switches_process_wide(ini):
        from .process_wide import switch_on

        switch_on()
    from flask import Flask

    # What the app prints while it loads goes to stderr: stdout is the report (--json).
    with contextlib.redirect_stdout(sys.stderr):
        app = _load(app_spec)
        command = "python -m flask_uwsgi_dbfix check"
        with app.app_context() if isinstance(app, Flask) else contextlib.nullcontext():
            try:
                report = build_report(
                    app,
                    ini_path,
                    app_import_path=app_spec,
                    scan_process=True,
                    command=command,
                    budget=budget,
                )
            except ServerLimitError as exc:
                raise BadInput(str(exc)) from None
    ctx.exit(print_report(report, out, as_json=as_json, strict=strict))


def _enter_ini_paths(ini: UwsgiIni) -> None:
    """What uWSGI does before it imports the app: ``chdir`` (relative to the ini's
    directory, as the audit reads it) and every ``pythonpath`` first on ``sys.path``."""
    chdir = ini.last("chdir")
    if chdir is not None and chdir.value:
        target = os.path.join(os.path.dirname(ini.path), chdir.value)
        try:
            os.chdir(target)
        except OSError as exc:
            raise BadInput(f"chdir = {chdir.value}: {exc.strerror}") from None
    for option in reversed(ini.all("pythonpath", "python-path", "pp")):
        if option.value:
            sys.path.insert(0, os.path.abspath(option.value))


def _served_spec(served: Any) -> str:
    for app in served:
        if app.module is not None:
            return f"{app.module}:{app.callable or 'application'}"
        if app.file is not None:
            return f"{os.path.abspath(app.file)}:{app.callable or 'application'}"
    raise BadInput("name the app with --app MODULE:CALLABLE (no ini, or it serves none)")


PASTE = "paste:"
"""``--app paste:PATH``: a PasteDeploy ini's app (Pyramid's ``uwsgi --ini-paste x.ini``)."""


def _paste_spec(ini: UwsgiIni) -> str | None:
    """``paste:PATH`` when the ini serves a PasteDeploy app: uWSGI's ``paste = config:PATH``,
    or (``uwsgi --ini-paste``) an ``[app:main]`` section in the same file."""
    option = ini.last("paste")
    if option is not None and option.value and option.value.startswith("config:"):
        path = option.value.removeprefix("config:")
        return PASTE + os.path.abspath(os.path.join(os.path.dirname(ini.path), path))
    parser = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        parser.read(ini.path, encoding="utf-8")
    except (configparser.Error, OSError, UnicodeDecodeError):
        return None
    mains = ("app:main", "pipeline:main", "composite:main")
    return PASTE + os.path.abspath(ini.path) if any(parser.has_section(m) for m in mains) else None


def _load_paste(path: str) -> object:
    try:
        from paste.deploy import loadapp  # type: ignore[import-not-found]
    except ImportError:
        raise BadInput(f"{path} is a PasteDeploy ini: install PasteDeploy to load it") from None
    return loadapp("config:" + os.path.abspath(path))


def _load(spec: str) -> object:
    """Import ``spec`` the way uWSGI's ``module``/``wsgi-file``/``paste`` would; bad input
    (exit 2) with one line when it does not load."""
    if spec.startswith(PASTE):
        path = spec.removeprefix(PASTE)
        if not os.path.isfile(path):
            raise BadInput(f"no such file: {path}")
        try:
            return _load_paste(path)
        except BadInput:
            raise
        except BaseException as exc:
            raise BadInput(f"could not load {path}: {describe_exception(exc)}") from None
    target, _, attr = spec.partition(":")
    try:
        module = _import_file(target) if target.endswith(".py") else _import_module(target)
    except BadInput:
        raise
    except BaseException as exc:  # SystemExit too: an app that exits at import did not load
        raise BadInput(f"could not load {target!r}: {describe_exception(exc)}") from None
    return _attribute(module, attr, spec)


def _import_module(name: str) -> ModuleType:
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `flask --app` and uWSGI's chdir do
    return importlib.import_module(name)


def _import_file(path: str) -> ModuleType:
    if not os.path.isfile(path):
        raise BadInput(f"no such file: {path}")
    directory = os.path.dirname(os.path.abspath(path))
    sys.path.insert(0, directory)
    name = os.path.splitext(os.path.basename(path))[0].replace(".", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise BadInput(f"cannot load {path} as Python")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _attribute(module: ModuleType, attr: str, spec: str) -> object:
    names = [attr] if attr else ["application", "app"]
    for name in names:
        call = name.endswith("()")
        found = getattr(module, name[:-2] if call else name, None)
        if found is None:
            continue
        if not call:
            return found
        try:
            return found()
        except BaseException as exc:
            raise BadInput(f"{spec}: {name} raised {describe_exception(exc)}") from None
    raise BadInput(f"{module.__name__} has no {' or '.join(repr(n) for n in names)} ({spec})")


@main.command(
    "run",
    context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False},
)
@click.argument("command", nargs=-1, type=click.UNPROCESSED, required=True)
def run_command(command: tuple[str, ...]) -> None:
    """Run COMMAND with the process-wide mode on (same as dbfix-run COMMAND)."""
    from .run import main as run

    click.get_current_context().exit(run(list(command)))


if __name__ == "__main__":
    main(prog_name="python -m flask_uwsgi_dbfix")
