"""``flask dbfix check``: every finding, exit code and bad input, in process; then the real
``flask`` command in a subprocess against PostgreSQL with SSL."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import event

from flask_uwsgi_dbfix import commands
from flask_uwsgi_dbfix._compat import flask_sqlalchemy_engines
from flask_uwsgi_dbfix.check import build_report, exit_code
from flask_uwsgi_dbfix.check.findings import ini as ini_findings
from flask_uwsgi_dbfix.check.output import render_human, report_to_json
from tests.cli_apps import factory
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

ROOT = Path(__file__).resolve().parent.parent
FACTORY = Path(factory.__file__).resolve()
ANSI = re.compile(r"\x1b\[[0-9;]*m")

MakeApp = Callable[..., Flask]


def mark_line(path: Path, mark: str) -> int:
    """Line number of the ``# MARK: <mark>`` comment, so tests never hard-code lines."""
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(f"no MARK: {mark} in {path}")


@pytest.fixture(autouse=True)
def in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No stray ./uwsgi.ini: each test decides whether there is one."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture
def make_app(tmp_path: Path) -> Iterator[MakeApp]:
    """Apps on a SQLite file (logic only); their held connections are closed afterwards."""
    apps: list[Flask] = []

    def make(**kwargs: Any) -> Flask:
        url = kwargs.pop("url", f"sqlite:///{tmp_path / f'db{len(apps)}.sqlite'}")
        app = factory.create_app(url, **kwargs)
        apps.append(app)
        return app

    yield make
    for app in apps:
        held = app.extensions.get("held")
        if held is not None:
            held.close()


def ini(tmp_path: Path, text: str, name: str = "uwsgi.ini") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


GOOD_INI = "[uwsgi]\nmaster = true\nprocesses = 4\n"


def run(app: Flask, *args: str) -> Result:
    return app.test_cli_runner().invoke(args=["dbfix", "check", *args])


def run_json(app: Flask, *args: str) -> dict[str, Any]:
    result = run(app, "--json", *args)
    data: dict[str, Any] = json.loads(result.stdout)
    assert data["verdict"]["exit_code"] == result.exit_code
    return data


def codes(data: dict[str, Any]) -> dict[str, str]:
    """finding code -> severity (the most severe when a code repeats)."""
    found: dict[str, str] = {}
    for f in reversed(data["findings"]):
        found[f["code"]] = f["severity"]
    return found


# -- verdicts and exit codes -----------------------------------------------------------


def test_clean_app_without_ini_exits_0(make_app: MakeApp) -> None:
    result = run(make_app())
    assert result.exit_code == 0, result.output
    assert "Verdict: OK" in result.stdout
    assert "no-uwsgi-ini" in result.stdout
    assert result.stderr == ""


def test_clean_app_with_a_good_ini_has_no_findings(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()
    module = types.ModuleType("served_clean")
    module.app = app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "served_clean", module)
    data = run_json(app, "--ini", str(ini(tmp_path, GOOD_INI + "module = served_clean:app\n")))
    assert data["findings"] == []
    assert data["verdict"] == {
        "status": "pass",
        "exit_code": 0,
        "strict": False,
        "errors": 0,
        "warnings": 0,
        "notes": 0,
    }
    assert data["uwsgi_config"]["served"][0]["matches"] == "same"


def test_query_while_creating_the_app_is_a_warning_naming_file_and_line(
    make_app: MakeApp,
) -> None:
    """With the fix on, workers drop their copies: the master's idle connection is waste."""
    result = run(make_app(query=True))
    assert result.exit_code == 0
    line = mark_line(FACTORY, "query")
    assert f"factory.py:{line} in create_app" in result.stdout
    assert "WARNING  prefork-connection" in result.stdout
    assert run(make_app(query=True), "--strict").exit_code == 1


def test_query_while_creating_the_app_without_the_fix_is_an_error(make_app: MakeApp) -> None:
    result = run(make_app(query=True, enabled=False))
    assert result.exit_code == 1
    assert "ERROR    prefork-connection" in result.stdout
    assert "Verdict: FAIL" in result.stdout


def test_prefork_connection_json_has_the_origin(make_app: MakeApp) -> None:
    data = run_json(make_app(query=True))
    (conn,) = data["prefork_connections"]
    assert conn["origin"] == {
        "file": str(FACTORY),
        "line": mark_line(FACTORY, "query"),
        "function": "create_app",
        "via": None,  # the app's own line connected: no library in between
    }
    assert conn["checked_out"] is False
    assert conn["pid"] == os.getpid()
    assert codes(data)["prefork-connection"] == "warning"
    assert data["engines"][0]["open_connections"] == 1


def test_connection_checked_out_at_fork_is_always_an_error(
    make_app: MakeApp, tmp_path: Path
) -> None:
    lazy = ini(tmp_path, GOOD_INI + "lazy-apps = true\n")
    data = run_json(make_app(hold=True), "--ini", str(lazy))
    assert codes(data)["checked-out-at-fork"] == "error"
    assert codes(data)["prefork-connection"] == "note"  # lazy-apps: nothing is inherited
    assert data["verdict"]["exit_code"] == 1
    held = [f for f in data["findings"] if f["code"] == "checked-out-at-fork"]
    assert f"factory.py:{mark_line(FACTORY, 'hold')}" in held[0]["location"]


def test_lazy_apps_makes_prefork_connections_info(make_app: MakeApp, tmp_path: Path) -> None:
    for option in ("lazy-apps = true", "lazy = 1"):
        data = run_json(make_app(query=True), "--ini", str(ini(tmp_path, GOOD_INI + option)))
        assert codes(data)["prefork-connection"] == "note"
        assert codes(data)["lazy-apps"] == "note"
        assert data["uwsgi_config"]["forks"] is False
        assert data["verdict"]["exit_code"] == 0


def test_single_process_without_master_does_not_fork(make_app: MakeApp, tmp_path: Path) -> None:
    data = run_json(make_app(query=True), "--ini", str(ini(tmp_path, "[uwsgi]\nsocket = :1\n")))
    assert codes(data)["prefork-connection"] == "note"
    assert codes(data)["single-worker"] == "note"
    assert codes(data)["no-master"] == "note"
    assert data["verdict"]["exit_code"] == 0


def test_single_process_with_master_still_forks(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(query=True, enabled=False)
    data = run_json(app, "--ini", str(ini(tmp_path, "[uwsgi]\nmaster = 1\n")))
    assert codes(data)["prefork-connection"] == "error"
    assert codes(data)["single-worker"] == "note"


def test_disabled_fix_with_prefork_connections_is_an_error(make_app: MakeApp) -> None:
    data = run_json(make_app(query=True, enabled=False))
    assert codes(data)["fix-disabled"] == "error"
    assert data["extension"]["enabled"] is False
    # Not managed, yet named: every pool's connections are stamped once the package is
    # imported. No advice to set py-call-uwsgi-fork-hooks: only the fix closes them then.
    assert data["engines"][0]["managed"] is False
    origins = [(c["origin"]["file"], c["origin"]["line"]) for c in data["prefork_connections"]]
    assert origins == [(str(FACTORY), mark_line(FACTORY, "query"))]
    assert codes(data)["prefork-connection"] == "error"
    prefork = next(f for f in data["findings"] if f["code"] == "prefork-connection")
    assert "py-call-uwsgi-fork-hooks" not in prefork["fix"]


def test_disabled_fix_is_info_when_lazy_apps_protects(make_app: MakeApp, tmp_path: Path) -> None:
    path = ini(tmp_path, GOOD_INI + "lazy-apps = true\n")
    data = run_json(make_app(query=True, enabled=False), "--ini", str(path))
    assert codes(data)["fix-disabled"] == "note"
    assert data["verdict"]["exit_code"] == 0


def test_disabled_fix_without_connections_is_info(make_app: MakeApp) -> None:
    data = run_json(make_app(enabled=False))
    assert codes(data)["fix-disabled"] == "note"
    assert data["engines"][0]["managed"] is False
    assert data["engines"][0]["open_connections"] == 0
    assert data["verdict"]["exit_code"] == 0


def test_in_memory_sqlite_is_no_engine_to_worry_about(make_app: MakeApp) -> None:
    data = run_json(make_app(url="sqlite://", query=True))
    assert data["engines"] == []
    assert codes(data) == {"no-engines": "note", "no-uwsgi-ini": "note"}


def test_app_without_the_extension_says_so(make_app: MakeApp) -> None:
    data = run_json(make_app(extension=False))
    assert data["extension"]["initialised"] is False
    assert (
        "not initialised"
        in next(f for f in data["findings"] if f["code"] == "fix-disabled")["message"]
    )


def test_no_master_with_several_workers_is_a_warning_and_strict_fails(
    make_app: MakeApp, tmp_path: Path
) -> None:
    path = str(ini(tmp_path, "[uwsgi]\nprocesses = 4\n"))
    app = make_app()
    result = run(app, "--ini", path)
    assert result.exit_code == 0
    assert "WARNING  no-master" in result.stdout
    strict = run(app, "--ini", path, "--strict")
    assert strict.exit_code == 1
    assert "warnings count as errors with --strict" in " ".join(strict.stdout.split())
    assert run_json(app, "--ini", path, "--strict")["verdict"]["strict"] is True


def test_info_findings_for_ini_options(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ini_findings, "osafterfork_kills_workers", lambda: False)  # below 3.13
    text = GOOD_INI + "py-call-osafterfork = true\nmax-requests = 1000\nenable-threads = false\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    found = codes(data)
    assert found["py-call-osafterfork"] == "note"
    assert found["max-requests"] == "note"
    assert found["enable-threads"] == "note"
    assert found["no-app-in-ini"] == "note"
    located = {f["code"]: f["location"] for f in data["findings"]}
    assert located["max-requests"] == "uwsgi.ini:5"
    assert data["verdict"]["exit_code"] == 0


@pytest.mark.parametrize("python_313", [False, True])
def test_py_call_osafterfork_on_python_313_is_an_error_recommending_fork_hooks(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, python_313: bool
) -> None:
    monkeypatch.setattr(ini_findings, "osafterfork_kills_workers", lambda: python_313)
    path = ini(tmp_path, GOOD_INI + "py-call-osafterfork = true\n")
    data = run_json(make_app(), "--ini", str(path))
    (finding,) = [f for f in data["findings"] if f["code"] == "py-call-osafterfork"]
    assert finding["severity"] == ("error" if python_313 else "note")
    assert data["verdict"]["exit_code"] == (1 if python_313 else 0)
    if python_313:
        assert "py-call-uwsgi-fork-hooks = true" in finding["fix"]


def test_fork_hooks_with_a_mounted_app_are_an_error_and_never_advised(
    make_app: MakeApp, tmp_path: Path
) -> None:
    """uWSGI 2.0.30 segfaults at start-up with mount + py-call-uwsgi-fork-hooks (measured
    with a hello-world app): the check says so, and never suggests the option for a
    mounted app."""
    mounted = GOOD_INI + "mount = /=tests.cli_apps.factory:app\n"
    data = run_json(
        make_app(), "--ini", str(ini(tmp_path, mounted + "py-call-uwsgi-fork-hooks = true\n"))
    )
    (finding,) = [f for f in data["findings"] if f["code"] == "py-call-uwsgi-fork-hooks"]
    assert finding["severity"] == "error"
    assert "segfaults" in finding["message"] and "module =" in finding["fix"]
    assert data["verdict"]["exit_code"] == 1
    plain = run_json(make_app(query=True), "--ini", str(ini(tmp_path, mounted)))
    (prefork,) = [f for f in plain["findings"] if f["code"] == "prefork-connection"]
    assert "py-call-uwsgi-fork-hooks" not in prefork["fix"]


def test_fork_hooks_let_the_master_close_idle_connections_itself(
    make_app: MakeApp, tmp_path: Path
) -> None:
    path = ini(tmp_path, GOOD_INI + "py-call-uwsgi-fork-hooks = true\n")
    data = run_json(make_app(query=True), "--ini", str(path), "--strict")
    assert data["uwsgi_config"]["py_call_uwsgi_fork_hooks"] is True
    assert codes(data)["py-call-uwsgi-fork-hooks"] == "note"
    assert codes(data)["prefork-connection"] == "note"  # the master closes it itself
    assert data["verdict"]["exit_code"] == 0
    # Without the option the warning says that this option would let the master do it.
    plain = run_json(make_app(query=True), "--ini", str(ini(tmp_path, GOOD_INI)))
    (finding,) = [f for f in plain["findings"] if f["code"] == "prefork-connection"]
    assert finding["severity"] == "warning"
    assert "py-call-uwsgi-fork-hooks = true" in finding["fix"]
    # The switch off: nothing is closed, the warning stays.
    off = make_app(query=True, close_before_fork=False)
    assert codes(run_json(off, "--ini", str(path)))["prefork-connection"] == "warning"


def test_more_threads_than_pooled_connections_is_a_warning(
    make_app: MakeApp, tmp_path: Path
) -> None:
    app = make_app(engine_options={"pool_size": 2, "max_overflow": 1})
    data = run_json(app, "--ini", str(ini(tmp_path, GOOD_INI + "threads = 8\n")))
    assert codes(data)["threads-exceed-pool"] == "warning"
    assert data["engines"][0]["pool_size"] == 2


def test_ini_serving_another_module_is_a_warning(make_app: MakeApp, tmp_path: Path) -> None:
    text = GOOD_INI + "module = myproject.wsgi:application\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    assert codes(data)["app-mismatch"] == "warning"
    (mismatch,) = (f for f in data["findings"] if f["code"] == "app-mismatch")
    assert "flask --app myproject.wsgi:application dbfix check" in mismatch["fix"]


def test_served_module_is_compared_without_importing_anything(
    make_app: MakeApp, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app, other = make_app(), make_app()
    module = types.ModuleType("served_wsgi")
    module.app = app  # type: ignore[attr-defined]
    module.other = other  # type: ignore[attr-defined]
    module.wrapped = app.wsgi_app  # type: ignore[attr-defined]
    module.middleware = lambda environ, start_response: []  # type: ignore[attr-defined]
    module.create_app = lambda: app  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "served_wsgi", module)
    expected = {
        "app": "same",
        "wrapped": "same",
        "other": "different",
        "missing": "different",
        "middleware": "unknown",
        "create_app()": "unknown",
    }
    for name, status in expected.items():
        path = ini(tmp_path, GOOD_INI + f"module = served_wsgi:{name}\n")
        data = run_json(app, "--ini", str(path))
        assert data["uwsgi_config"]["served"][0]["matches"] == status, name
    report = build_report(
        app, ini(tmp_path, "[uwsgi]\nmodule = served_wsgi:create_app()\n"),
        app_import_path="served_wsgi:create_app()",
    )  # fmt: skip
    assert report.uwsgi is not None and report.uwsgi.matches[0].status == "same"


def test_wsgi_file_is_matched_by_path(make_app: MakeApp, tmp_path: Path) -> None:
    text = GOOD_INI + f"wsgi-file = {FACTORY}\ncallable = create_app\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    served = data["uwsgi_config"]["served"][0]
    assert served["file"] == str(FACTORY)
    assert served["matches"] == "unknown"  # a function, not this app


def test_unresolvable_placeholder_is_a_warning_not_a_guess(
    make_app: MakeApp, tmp_path: Path
) -> None:
    path = str(ini(tmp_path, "[uwsgi]\nmaster = true\nprocesses = %(cores)\n"))
    app = make_app()
    result = run(app, "--ini", path)
    assert result.exit_code == 0
    assert "WARNING  ini-unresolved" in result.stdout
    assert "%(cores)" in result.stdout
    assert "processes                 unresolved" in result.stdout
    data = run_json(app, "--ini", path)
    assert data["uwsgi_config"]["processes"] is None
    assert data["uwsgi_config"]["unresolved"] == [
        {
            "file": str(tmp_path / "uwsgi.ini"),
            "line": 3,
            "option": "processes",
            "token": "%(cores)",
            "reason": "no such option in this file or its includes",
        }
    ]
    assert run(app, "--ini", path, "--strict").exit_code == 1


def test_unresolvable_fork_settings_make_prefork_a_warning(
    make_app: MakeApp, tmp_path: Path
) -> None:
    text = "[uwsgi]\nprocesses = $(NOT_SET_ANYWHERE)\n"
    data = run_json(make_app(query=True), "--ini", str(ini(tmp_path, text)))
    assert data["uwsgi_config"]["forks"] is None
    assert codes(data)["prefork-connection"] == "warning"


def test_unresolved_values_of_other_options_are_one_info(make_app: MakeApp, tmp_path: Path) -> None:
    text = GOOD_INI + "logto = /var/log/%h.log\npidfile = $(PIDFILE_NOT_SET)\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    unresolved = [f for f in data["findings"] if f["code"] == "ini-unresolved"]
    assert [f["severity"] for f in unresolved] == ["note"]
    assert "logto, pidfile" in unresolved[0]["message"]


def test_misspelt_and_commented_options_are_warnings(make_app: MakeApp, tmp_path: Path) -> None:
    text = GOOD_INI + "lazy_apps = true\nmax-requests = 100 # per worker\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    assert codes(data)["ini-misspelt-option"] == "warning"
    assert codes(data)["ini-inline-comment"] == "warning"


def test_master_implied_by_another_option(make_app: MakeApp, tmp_path: Path) -> None:
    text = "[uwsgi]\nprocesses = 2\ntouch-reload = /tmp/reload\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    assert data["uwsgi_config"]["master"] is True
    assert data["uwsgi_config"]["master_implied_by"] == "touch-reload"
    assert "no-master" not in codes(data)


TWO_MOUNTS = "mount = /a=served_a:app\nmount = /b=served_b:app\n"


def test_several_mounts_without_single_interpreter_is_a_warning(
    make_app: MakeApp, tmp_path: Path
) -> None:
    app = make_app()
    text = GOOD_INI + TWO_MOUNTS
    path = str(ini(tmp_path, text))
    data = run_json(app, "--ini", path)
    assert codes(data)["multiple-interpreters"] == "warning"
    (finding,) = (f for f in data["findings"] if f["code"] == "multiple-interpreters")
    assert "the app mounted at /b runs in its own Python sub-interpreter" in finding["message"]
    assert "only in the main interpreter" in finding["message"]
    assert finding["fix"].startswith("Set single-interpreter = true")
    assert finding["location"] == "uwsgi.ini:5"
    assert data["uwsgi_config"]["single_interpreter"] is None
    result = run(app, "--ini", path)
    assert "WARNING  multiple-interpreters" in result.stdout
    assert "single-interpreter        no\n" in result.stdout
    assert run(app, "--ini", path, "--strict").exit_code == 1


def test_mount_next_to_module_gets_its_own_interpreter(make_app: MakeApp, tmp_path: Path) -> None:
    """module/wsgi-file load first, in the main interpreter; every mount then gets its own."""
    text = GOOD_INI + "mount = /a=served_a:app\nmount = /b=b.wsgi\nmodule = served_main:app\n"
    data = run_json(make_app(), "--ini", str(ini(tmp_path, text)))
    (finding,) = (f for f in data["findings"] if f["code"] == "multiple-interpreters")
    assert finding["message"].startswith("3 apps are loaded")
    assert "the apps mounted at /a, /b run in their own" in finding["message"]


def test_single_interpreter_true_has_no_interpreter_warning(
    make_app: MakeApp, tmp_path: Path
) -> None:
    text = GOOD_INI + TWO_MOUNTS + "single-interpreter = true\n"
    app = make_app()
    path = str(ini(tmp_path, text))
    data = run_json(app, "--ini", path)
    assert "multiple-interpreters" not in codes(data)
    assert data["uwsgi_config"]["single_interpreter"] is True
    assert "single-interpreter        yes\n" in run(app, "--ini", path).stdout


@pytest.mark.parametrize(
    "apps",
    [
        "mount = /a=served_a:app\n",
        "module = served_a:app\n",
        "module = served_a:app\nwsgi-file = b.py\n",  # both in the main interpreter
        "mount = /a=served_a:app\nmount = /static=/srv/static\n",  # not a Python app
        TWO_MOUNTS + "lazy-apps = true\n",
        TWO_MOUNTS + "single-interpreter = $(NOT_SET_ANYWHERE)\n",
    ],
)
def test_no_interpreter_warning_without_forked_sub_interpreters(
    make_app: MakeApp, tmp_path: Path, apps: str
) -> None:
    data = run_json(make_app(), "--ini", str(ini(tmp_path, GOOD_INI + apps)))
    assert "multiple-interpreters" not in codes(data)


def test_default_ini_is_used_when_present(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app()
    assert run_json(app)["uwsgi_config"] is None
    ini(tmp_path, GOOD_INI)
    data = run_json(app)
    assert data["uwsgi_config"]["source"] == "default"
    assert data["uwsgi_config"]["path"] == str(tmp_path / "uwsgi.ini")


def test_named_section(make_app: MakeApp, tmp_path: Path) -> None:
    path = ini(tmp_path, "[uwsgi]\nprocesses = 1\n[prod]\nmaster = 1\nprocesses = 9\n")
    data = run_json(make_app(), "--ini", f"{path}:prod")
    assert (data["uwsgi_config"]["section"], data["uwsgi_config"]["processes"]) == ("prod", 9)


# -- bad input: exit 2, one line on stderr ---------------------------------------------


BAD_FILES: dict[str, bytes | None] = {
    "missing": None,
    "empty": b"",
    "binary": bytes(range(256)) * 4,
    "no-section": b"[app]\nmaster = true\n",
    "no-section-header": b"master = true\nprocesses = 4\n",
    "unclosed-header": b"[uwsgi\nmaster = true\n",
    "latin-1": b"[uwsgi]\nmodule = caf\xe9:app\n",
}


@pytest.mark.parametrize("kind", BAD_FILES)
def test_bad_ini_files_exit_2_with_one_line_and_json_says_why(
    make_app: MakeApp, tmp_path: Path, kind: str
) -> None:
    path = tmp_path / f"{kind}.ini"
    content = BAD_FILES[kind]
    if content is not None:
        path.write_bytes(content)
    app = make_app()
    result = run(app, "--ini", str(path))
    assert result.exit_code == 2
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ")
    assert result.stderr.count("\n") == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert str(path) in result.stderr
    as_json = run(app, "--ini", str(path), "--json")
    assert (as_json.exit_code, as_json.stderr) == (2, result.stderr)
    data = json.loads(as_json.stdout)  # --json: the output always parses
    assert data["error"] == result.stderr.removeprefix("Error: ").rstrip("\n")
    assert data["verdict"] == {"status": "error", "exit_code": 2}
    assert data["schema_version"] == 2


def test_directory_instead_of_file_exits_2(make_app: MakeApp, tmp_path: Path) -> None:
    result = run(make_app(), "--ini", str(tmp_path))
    assert result.exit_code == 2
    assert result.stderr == f"Error: {tmp_path}: is a directory, not an ini file\n"


def test_broken_default_ini_exits_2(make_app: MakeApp, tmp_path: Path) -> None:
    ini(tmp_path, "")
    result = run(make_app())
    expected = f"Error: {tmp_path / 'uwsgi.ini'}: file is empty\n"
    assert (result.exit_code, result.stderr) == (2, expected)


@pytest.mark.parametrize(
    ("args", "message", "usage"),
    [
        (("--bogus",), "No such option", True),
        (("extra",), "unexpected extra argument", True),
        (("--ini",), "requires an argument", False),  # Click prints no usage for this one
    ],
)
def test_usage_errors_are_clicks_usage_line_and_error_exit_2(
    make_app: MakeApp, args: tuple[str, ...], message: str, usage: bool
) -> None:
    """As every other ``flask`` command (``flask routes --bogus``): Click's usage line and
    hint, then ``Error: ...``, exit 2."""
    result = run(make_app(), *args)
    assert result.exit_code == 2
    lines = result.stderr.splitlines()
    assert lines[-1].startswith("Error: ") and message in lines[-1]
    if usage:
        assert lines[0].startswith("Usage: ") and lines[0].endswith(" dbfix check [OPTIONS]")
        assert lines[1].endswith(" dbfix check --help' for help.")
    else:
        assert len(lines) == 1
    assert result.stdout == ""
    with_json = run(make_app(), "--json", *args)
    assert with_json.exit_code == 2
    assert message in json.loads(with_json.stdout)["error"]


# -- output ----------------------------------------------------------------------------

SECRET = "pw-Zx81-never-print"


def test_password_appears_nowhere(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(url=f"postgresql+psycopg2://app:{SECRET}@db.invalid:5432/app?sslmode=require")
    text = (
        GOOD_INI + f"if-env = PROD\nenv = DATABASE_URL=postgresql://app:{SECRET}@db/app\n"
        "endif =\n"
        f"env = OTHER=postgresql://app:{SECRET}@db/%(nope)\n"
    )
    path = str(ini(tmp_path, text))
    outputs = [run(app, "--ini", path), run(app, "--ini", path, "--json")]
    for result in outputs:
        assert SECRET not in result.stdout + result.stderr
    assert "postgresql+psycopg2://app:***@db.invalid:5432/app" in outputs[0].stdout
    data = json.loads(outputs[1].stdout)
    assert data["engines"][0]["url"].startswith("postgresql+psycopg2://app:***@")
    tokens = [u["token"] for u in data["uwsgi_config"]["unresolved"]]
    assert "env = DATABASE_URL=postgresql://app:***@db/app" in tokens


def test_password_in_a_query_string_appears_nowhere(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(url=f"postgresql+psycopg2://app@db.invalid/app?password={SECRET}&x=1")
    text = GOOD_INI + f"env = OTHER=postgresql://db/%(nope)?sslpassword={SECRET}&sslmode=require\n"
    path = str(ini(tmp_path, text))
    for result in (run(app, "--ini", path), run(app, "--ini", path, "--json")):
        assert SECRET not in result.stdout + result.stderr
        assert "password=***" in result.stdout


def test_json_schema(make_app: MakeApp, tmp_path: Path) -> None:
    data = run_json(make_app(query=True), "--ini", str(ini(tmp_path, GOOD_INI)))
    assert list(data) == [
        "schema_version",
        "app",
        "extension",
        "engines",
        "prefork_connections",
        "uwsgi_config",
        "connection_budget",
        "findings",
        "verdict",
    ]
    assert data["schema_version"] == 2
    assert set(data["app"]) == {"name", "import_path", "pid"}
    assert set(data["extension"]) == {
        "initialised",
        "enabled",
        "prefork_warning",
        "pid_guard",
        "close_before_fork",
        "process_wide",
    }
    assert set(data["engines"][0]) == {
        "name",
        "source",
        "url",
        "dialect",
        "driver",
        "pool_class",
        "pool_size",
        "max_overflow",
        "open_connections",
        "managed",
        "prepares_statements",
    }
    assert data["connection_budget"] == []  # SQLite needs no server (keys: test_budget.py)
    assert set(data["prefork_connections"][0]) == {"engine", "url", "pid", "checked_out", "origin"}
    assert set(data["uwsgi_config"]) == {
        "path",
        "section",
        "source",
        "files",
        "master",
        "master_implied_by",
        "processes",
        "lazy_apps",
        "lazy_option",
        "enable_threads",
        "threads",
        "py_call_osafterfork",
        "py_call_uwsgi_fork_hooks",
        "max_requests",
        "single_interpreter",
        "mules",
        "spooler_processes",
        "forks",
        "fork_reason",
        "served",
        "unresolved",
    }
    for finding in data["findings"]:
        assert set(finding) == {"code", "severity", "message", "fix", "location"}
        assert finding["severity"] in ("error", "warning", "note")
    assert set(data["verdict"]) == {"status", "exit_code", "strict", "errors", "warnings", "notes"}


def test_findings_are_ordered_by_severity(make_app: MakeApp, tmp_path: Path) -> None:
    text = "[uwsgi]\nprocesses = 4\npy-call-osafterfork = 1\n"
    data = run_json(make_app(query=True, enabled=False), "--ini", str(ini(tmp_path, text)))
    order = {"error": 0, "warning": 1, "note": 2}
    severities = [order[f["severity"]] for f in data["findings"]]
    assert severities == sorted(severities)
    assert len(set(severities)) == 3


def test_human_output_fits_80_columns_and_has_no_colour_off_a_tty(
    make_app: MakeApp, tmp_path: Path
) -> None:
    text = GOOD_INI + "module = nowhere:app\nprocesses = %(x)\nlazy_apps = 1\n"
    deep = tmp_path / ("a-rather-long-directory-name-" * 3) / "and-deeper"
    deep.mkdir(parents=True)
    url = f"sqlite:///{deep / 'database.sqlite'}"
    result = run(make_app(query=True, hold=True, url=url), "--ini", str(ini(tmp_path, text)))
    assert not ANSI.search(result.stdout)
    # Only a single path or URL too long for any line may overflow: it is never cut.
    lines = result.stdout.splitlines()
    long = [line for line in lines if len(line) > 80]
    assert long and all(len(line.split()[-1]) > 80 - 11 for line in long), long
    assert any(line.split()[-1:] == [url] for line in lines), result.stdout  # whole, copyable
    # The app's own file, shortened to its importable path and kept in one piece.
    assert f"tests/cli_apps/factory.py:{mark_line(FACTORY, 'query')}" in result.stdout
    assert "\nEngines\n" in result.stdout
    assert "\nFindings\n" in result.stdout


def test_colour_only_on_a_tty(make_app: MakeApp, monkeypatch: pytest.MonkeyPatch) -> None:
    app = make_app(query=True, enabled=False)
    monkeypatch.setattr(commands, "_is_tty", lambda stream: True)
    coloured = run(app).stdout
    assert ANSI.search(coloured)
    assert "\x1b[31m" in coloured  # errors in red
    assert ANSI.sub("", coloured) == run_plain(app)


def run_plain(app: Flask) -> str:
    with app.app_context():
        return render_human(build_report(app), color=False)


def test_the_command_opens_no_connection(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(query=True)
    engine = flask_sqlalchemy_engines(app)[None]
    connects: list[object] = []
    event.listen(engine, "connect", lambda *a: connects.append(a))
    checkouts: list[object] = []
    event.listen(engine, "checkout", lambda *a: checkouts.append(a))
    run(app, "--ini", str(ini(tmp_path, GOOD_INI)))
    run(app, "--json")
    assert (connects, checkouts) == ([], [])


def test_library_functions_without_the_command(make_app: MakeApp, tmp_path: Path) -> None:
    app = make_app(query=True)
    report = build_report(app, ini(tmp_path, GOOD_INI + "lazy-apps = true\n"))
    assert exit_code(report) == 0
    assert report.prefork[0].origin is not None
    data = report_to_json(report, strict=True)
    assert data["verdict"]["exit_code"] == 0
    text = render_human(report)
    assert text.endswith("(exit 0).\n")
    assert "lazy-apps                 yes (lazy-apps)" in text


# -- the real `flask` command against PostgreSQL with SSL ------------------------------

FLASK = Path(sys.executable).parent / "flask"
IMPORT_APP = ROOT / "tests" / "cli_apps" / "import_query_app.py"


def flask_check(database_url: str, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(FLASK), "--app", "tests.cli_apps.import_query_app", "dbfix", "check", *args],
        cwd=ROOT,
        env={**os.environ, "DATABASE_URL": database_url, "PYTHONPATH": str(ROOT), **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_real_flask_command_finds_the_import_time_query(pg: Any, tmp_path: Path) -> None:
    url: str = pg.url()
    path = ini(tmp_path, GOOD_INI + "module = tests.cli_apps.import_query_app:app\n")
    result = flask_check(url, "--ini", str(path), "--strict")
    assert result.returncode == 1, result.stdout + result.stderr
    where = f"tests/cli_apps/import_query_app.py:{mark_line(IMPORT_APP, 'import')} in <module>"
    assert where in result.stdout
    assert "WARNING  prefork-connection" in result.stdout
    assert flask_check(url, "--ini", str(path)).returncode == 0  # the fix is on: a warning
    unfixed = flask_check(url, "--ini", str(path), DBFIX_ENABLED="false")
    assert unfixed.returncode == 1, unfixed.stdout + unfixed.stderr
    assert "ERROR    prefork-connection" in unfixed.stdout
    assert "postgresql+psycopg2" in result.stdout
    assert "(same: tests.cli_apps.import_query_app:app is this app)" in " ".join(
        result.stdout.split()
    )
    data = json.loads(flask_check(url, "--ini", str(path), "--json").stdout)
    origin = data["prefork_connections"][0]["origin"]
    assert (origin["file"], origin["line"]) == (str(IMPORT_APP), mark_line(IMPORT_APP, "import"))
    for output in (result.stdout, result.stderr, json.dumps(data)):
        assert pg.password not in output


def test_real_flask_command_checks_an_app_that_has_not_adopted_the_extension(
    pg: Any, tmp_path: Path
) -> None:
    """``flask dbfix check`` is a Flask CLI plugin (entry point): it diagnoses an app before
    FlaskDBFix is added, which is when it is most needed."""
    path = ini(tmp_path, GOOD_INI + "module = tests.cli_apps.import_query_app:app\n")
    result = flask_check(pg.url(), "--ini", str(path), DBFIX_INIT="0")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "ERROR    fix-disabled" in result.stdout
    assert "FlaskDBFix is not initialised on this app" in " ".join(result.stdout.split())
    assert "ERROR    prefork-connection" in result.stdout


def test_real_flask_command_passes_a_clean_app(pg: Any, tmp_path: Path) -> None:
    path = ini(tmp_path, GOOD_INI + "module = tests.cli_apps.import_query_app:app\n")
    result = flask_check(pg.url(), "--ini", str(path), "--strict", IMPORT_QUERY="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Verdict: OK" in result.stdout
    assert result.stderr == ""
    bad = flask_check(pg.url(), "--ini", str(tmp_path / "missing.ini"), IMPORT_QUERY="0")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [f"Error: {tmp_path / 'missing.ini'}: no such file"]


def test_real_flask_command_a_bad_dbfix_setting_is_one_line_and_exit_2(pg: Any) -> None:
    """The app's own DBFIX_* value is wrong: the check says which and why, no traceback."""
    result = flask_check(pg.url(), DBFIX_ENABLED="maybe")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    assert line.startswith("Error: the app did not load: DBFIX_ENABLED must be a boolean"), line
    assert "'maybe'" in line
