# ruff: noqa: F811
"""``flask dbfix check`` and ``python -m flask_uwsgi_dbfix check`` as a CI gate sees them:
exit 2 with one line for anything that stopped the check, JSON that always parses, output
within ``COLUMNS`` and without colour on request, the ``pyuwsgi-venv-reload`` finding (the
real reload is in test_pyuwsgi_reload.py), and the project's own uwsgi.ini passing its own
gate."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from flask_uwsgi_dbfix import commands
from flask_uwsgi_dbfix.check.findings import ini as ini_findings
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

# test_cli.py's fixtures (the app builder, the tmp working dir) and its CLI runner; a test
# naming a fixture as its parameter is what ruff's F811 reports, hence the file-level noqa.
from tests.test_cli import in_tmp_dir, make_app, run  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
FLASK = Path(sys.executable).parent / "flask"
ANSI = "\x1b["
SECRET = "pw-Qe41-never-print"

RAISING_APP = f"""
from flask import Flask

app = Flask(__name__)
raise RuntimeError("cannot reach postgresql://app:{SECRET}@db.invalid/app")  # MARK: raise
"""


def check(*argv: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": f"{cwd}{os.pathsep}{ROOT}", **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- exit 2: the check stopped --------------------------------------------------------


def test_app_raising_at_import_exits_2_with_one_masked_line_naming_where(tmp_path: Path) -> None:
    """Not 1 (that is "unsafe"), no traceback, the password masked, the line that raised
    named; with --json the same message in a parseable object on stdout."""
    (tmp_path / "raising_app.py").write_text(RAISING_APP)
    where = "raising_app.py:5"
    runs = {
        "flask": (str(FLASK), "--app", "raising_app", "dbfix", "check"),
        "python -m": (sys.executable, "-m", "flask_uwsgi_dbfix", "check", "--app", "raising_app"),
    }
    for name, argv in runs.items():
        human = check(*argv, cwd=tmp_path)
        assert human.returncode == 2, (name, human.stderr)
        assert human.stdout == ""
        (line,) = human.stderr.splitlines()
        assert line.startswith("Error: ") and "RuntimeError: cannot reach" in line, line
        assert f"(raised at {where})" in line, line
        assert SECRET not in line and "app:***@db.invalid" in line
    # An ImportError inside the app: Flask's message holds a whole traceback; one line here.
    (tmp_path / "missing_dep_app.py").write_text("import no_such_dependency_q7\n")
    missing = check(str(FLASK), "--app", "missing_dep_app", "dbfix", "check", cwd=tmp_path)
    assert missing.returncode == 2
    assert missing.stderr.splitlines() == [
        "Error: the app did not load: ModuleNotFoundError: No module named "
        "'no_such_dependency_q7' (raised at missing_dep_app.py:1)"
    ]
    done = check(*runs["flask"], "--json", cwd=tmp_path)
    assert done.returncode == 2
    data = json.loads(done.stdout)
    assert data["verdict"] == {"status": "error", "exit_code": 2}
    assert f"(raised at {where})" in data["error"] and SECRET not in done.stdout + done.stderr


def test_python_m_usage_errors_are_clicks_and_json_still_parses() -> None:
    """``python -m flask_uwsgi_dbfix check`` behaves like ``flask dbfix check``."""
    from click.testing import CliRunner

    from flask_uwsgi_dbfix.__main__ import main

    runner = CliRunner()
    done = runner.invoke(main, ["check", "--bogus"], prog_name="python -m flask_uwsgi_dbfix")
    assert done.exit_code == 2 and done.stdout == ""
    assert done.stderr.splitlines() == [
        "Usage: python -m flask_uwsgi_dbfix check [OPTIONS]",
        "Try 'python -m flask_uwsgi_dbfix check --help' for help.",
        "",
        "Error: No such option '--bogus'.",
    ]
    as_json = runner.invoke(main, ["check", "--json", "--bogus"])
    assert as_json.exit_code == 2
    assert json.loads(as_json.stdout)["error"] == "No such option '--bogus'."


def test_report_goes_to_the_real_stdout_when_the_app_made_stdout_stderr(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``sys.stdout = sys.stderr`` done before the command runs (an app loaded early):
    the report still goes to the process's standard output; a capture is left alone."""
    monkeypatch.setattr(sys, "stdout", sys.stderr)
    assert commands.report_stream() is sys.__stdout__
    capture = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        monkeypatch.setattr(sys, "stdout", capture)
        assert commands.report_stream() is capture
    finally:
        capture.close()


# -- width and colour -----------------------------------------------------------------

LOUD_INI = "[uwsgi]\nprocesses = 4\nmax-requests = 100\nenable-threads = false\n"


def longest_line(text: str) -> int:
    """The longest line that is not one path or URL too long for any line (those are
    never cut, to stay copyable)."""
    return max(len(line) for line in text.splitlines() if "sqlite:///" not in line)


def test_every_line_and_the_verdict_fit_80_columns_or_columns(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The longest verdict there is (FAIL under --strict, notes counted) included."""
    (tmp_path / "uwsgi.ini").write_text(LOUD_INI)
    app = make_app(query=True)
    monkeypatch.delenv("COLUMNS", raising=False)
    wide = run(app, "--strict").stdout
    assert "Verdict: FAIL" in wide and " notes;" in wide
    assert longest_line(wide) <= 80, wide
    monkeypatch.setenv("COLUMNS", "60")
    narrow = run(app, "--strict").stdout
    assert longest_line(narrow) <= 60, narrow
    assert " ".join(narrow.split()) == " ".join(wide.split())  # the same words, rewrapped
    monkeypatch.setenv("COLUMNS", "5")  # nonsense: a floor, not a word per line
    assert longest_line(run(app, "--strict").stdout) <= 60


def test_no_color_wins_force_color_colours_a_pipe(
    make_app: Callable[..., Flask], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app(query=True, enabled=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.delenv("FORCE_COLOR", raising=False)
    assert ANSI not in run(app).stdout  # a pipe: plain
    monkeypatch.setenv("FORCE_COLOR", "1")
    assert ANSI in run(app).stdout
    monkeypatch.setattr(commands, "_is_tty", lambda stream: True)
    monkeypatch.setenv("NO_COLOR", "1")
    assert ANSI not in run(app).stdout  # a terminal, FORCE_COLOR too: NO_COLOR wins


def test_findings_are_notes_in_text_and_json(make_app: Callable[..., Flask]) -> None:
    app = make_app()
    text = run(app).stdout
    assert "NOTE     no-uwsgi-ini" in text and "INFO" not in text
    assert "1 note;" in text
    data = json.loads(run(app, "--json").stdout)
    assert {f["severity"] for f in data["findings"]} == {"note"}
    assert data["verdict"]["notes"] == len(data["findings"]) and "infos" not in data["verdict"]


# -- pyuwsgi in a virtualenv ------------------------------------------------------------


def test_pyuwsgi_in_a_virtualenv_without_binary_path_is_a_warning_with_the_line_to_add(
    make_app: Callable[..., Flask], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ini_findings, "pyuwsgi_venv_python", lambda: "/srv/venv/bin/python")
    monkeypatch.delenv("UWSGI_BINARY_PATH", raising=False)
    path = tmp_path / "uwsgi.ini"
    path.write_text("[uwsgi]\nmaster = true\nprocesses = 4\n")
    app = make_app()
    data = json.loads(run(app, "--json").stdout)
    (found,) = [f for f in data["findings"] if f["code"] == "pyuwsgi-venv-reload"]
    assert found["severity"] == "warning"
    assert "Add binary-path = /srv/venv/bin/python" in found["fix"]
    assert run(app, "--strict").exit_code == 1
    codes: Callable[[], set[str]] = lambda: {  # noqa: E731
        f["code"] for f in json.loads(run(app, "--json").stdout)["findings"]
    }
    monkeypatch.setenv("UWSGI_BINARY_PATH", "/srv/venv/bin/python")  # uWSGI reads it too
    assert "pyuwsgi-venv-reload" not in codes()
    monkeypatch.delenv("UWSGI_BINARY_PATH")
    path.write_text("[uwsgi]\nmaster = true\nprocesses = 4\nbinary-path = /srv/venv/bin/python\n")
    assert "pyuwsgi-venv-reload" not in codes()
    monkeypatch.setattr(ini_findings, "pyuwsgi_venv_python", lambda: None)  # uWSGI's binary
    path.write_text("[uwsgi]\nmaster = true\nprocesses = 4\n")
    assert "pyuwsgi-venv-reload" not in codes()


def test_this_virtualenvs_uwsgi_is_recognised_as_pyuwsgi() -> None:
    script = Path(sys.prefix, "bin", "uwsgi")
    if sys.prefix == sys.base_prefix or b"pyuwsgi" not in script.read_bytes()[:4096]:
        pytest.skip("not pyuwsgi in a virtualenv")
    assert ini_findings.pyuwsgi_venv_python() == str(Path(sys.prefix, "bin", "python"))


# -- the project's own uwsgi.ini ------------------------------------------------------


def test_the_shipped_uwsgi_ini_passes_its_own_strict_gate(pg: Any, tmp_path: Path) -> None:
    """The README recommends ``--strict`` as a gate: the example people copy passes it,
    pyuwsgi-venv-reload included (UWSGI_BINARY_PATH unset)."""
    env = {k: v for k, v in os.environ.items() if k != "UWSGI_BINARY_PATH"}
    done = subprocess.run(
        [sys.executable, "-m", "flask_uwsgi_dbfix", "check", "--ini", "uwsgi.ini", "--strict"],
        cwd=ROOT,
        env={**env, "DATABASE_URL": pg.url(), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Verdict: OK: 0 errors, 0 warnings" in done.stdout
    assert "(same: example_app.wsgi:app is this app)" in " ".join(done.stdout.split())
