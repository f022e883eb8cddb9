"""Registering an engine never breaks what worked: SQLAlchemy's own engine tests, with us.

Runs ``test/engine`` of the installed SQLAlchemy version's sdist (downloaded by
scripts/setup.sh) on SQLite (that suite's default database), as is and with
tests/dropin/sqlalchemy_dropin.py handing every engine the suite creates to
``flask_uwsgi_dbfix.register()``. Compared test by test: a test that fails without the
package may fail with it, nothing else may change. That folder is where SQLAlchemy tests
what the package touches: pools, their events, ``.info``, reconnects, ``dispose()``.

A few of its test classes clear every class-level listener of ``Pool``, ``Engine`` or
``Connection`` in their teardown (``Pool.dispatch._clear()``), and SQLAlchemy's plugin runs
classes in alphabetical order: every test after them would meet a package that listens at
class level already switched off, and pass. So the comparison is made twice: on the whole
folder, and on the folder without those classes, where every test meets the package as it
set itself up.

Both runs use the installed SQLAlchemy, the one the package runs with: ``python -s``, since
otherwise the sdist's ``test/conftest.py`` puts its own uncompiled ``lib/`` first on
``sys.path``. A run takes about 30 s on a 2-core machine, mostly the pool tests' sleeps.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DROPIN = Path(__file__).resolve().parent / "dropin"
VERSION = importlib.metadata.version("sqlalchemy")
SUITE = "test/engine"
TIMEOUT = 600  # seconds per run; a run takes about 30


def sdist() -> Path | None:
    """The installed version's sdist; older ones are spelled ``SQLAlchemy-1.4.x``."""
    wanted = f"sqlalchemy-{VERSION}.tar.gz"
    found = (p for p in (ROOT / ".thirdparty").glob("*.tar.gz") if p.name.lower() == wanted)
    return next(found, None)


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sdist unpacked once: both comparisons run the same files."""
    archive_path = sdist()
    if archive_path is None:
        # Only the locked version is fetched; a matrix leg may run another one.
        pytest.skip(
            f"no sdist of the installed SQLAlchemy {VERSION} in .thirdparty/: scripts/setup.sh "
            "fetches the locked one (scripts/fetch_sdist.py sqlalchemy .thirdparty)"
        )
    target = tmp_path_factory.mktemp("sqlalchemy")
    with tarfile.open(archive_path) as archive:
        archive.extractall(target, filter="data")
    (unpacked,) = target.iterdir()
    return unpacked


def _clears_listeners(node: ast.AST) -> bool:
    """``<something>.dispatch._clear()``"""
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "_clear"
        and isinstance(node.func.value, ast.Attribute)
        and node.func.value.attr == "dispatch"
    )


def classes_clearing_listeners(suite: Path) -> list[str]:
    """Node-id prefixes of the suite's test classes that clear class-level listeners
    (read from the source: which ones, and their names, vary between releases)."""
    found = []
    for path in sorted((suite / SUITE).glob("test_*.py")):
        classes = [n for n in ast.parse(path.read_bytes()).body if isinstance(n, ast.ClassDef)]
        clearing = {c.name for c in classes if any(map(_clears_listeners, ast.walk(c)))}
        for cls in classes:  # and their subclasses (defined after them) in the module
            if any(isinstance(base, ast.Name) and base.id in clearing for base in cls.bases):
                clearing.add(cls.name)
        # A prefix: __backend__ classes run as e.g. ``HandleErrorTest_sqlite+pysqlite_3_40_1``.
        found += [f"{SUITE}/{path.name}::{name}" for name in sorted(clearing)]
    return found


def run_suite(
    suite: Path, tmp_path: Path, deselect: list[str], dbfix: bool
) -> tuple[dict[str, str], dict[str, int], subprocess.CompletedProcess[str]]:
    """Outcome per test id, what the plugin registered (empty without it), the process."""
    label = "dbfix" if dbfix else "plain"
    junit, report = tmp_path / f"{label}.xml", tmp_path / f"{label}.json"
    # Not PYTEST_ADDOPTS: options meant for our own run (CI adds a JUnit file) stay ours.
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    # ROOT: the flask_uwsgi_dbfix next to these tests (or, when it is absent, the installed one).
    env["PYTHONPATH"] = os.pathsep.join([str(DROPIN), str(ROOT)])
    args = [sys.executable, "-s", "-m", "pytest", SUITE, "-p", "no:cacheprovider"]
    args += [f"--junitxml={junit}", *(f"--deselect={prefix}" for prefix in deselect)]
    if dbfix:
        env["DBFIX_DROPIN_REPORT"] = str(report)
        args += ["-p", "sqlalchemy_dropin"]
    run = subprocess.run(args, cwd=suite, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert junit.exists(), f"the {label} run did not start:\n{run.stdout[-4000:]}{run.stderr}"
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcome = "failed" if failed else "skipped" if skipped else "passed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    registered = json.loads(report.read_text()) if dbfix else {}
    return outcomes, registered, run


@pytest.mark.parametrize("isolated", [False, True], ids=["whole", "without-listener-clearing"])
def test_sqlalchemy_engine_suite_has_the_same_outcomes_with_every_engine_registered(
    suite: Path, tmp_path: Path, isolated: bool
) -> None:
    deselect = classes_clearing_listeners(suite) if isolated else []
    assert deselect or not isolated, "no test class clears class-level listeners any more"
    baseline, _, plain = run_suite(suite, tmp_path, deselect, dbfix=False)
    assert len(baseline) > 500, f"the suite did not run: {len(baseline)} test cases"
    assert "passed" in baseline.values(), "not one of the suite's tests passed"

    outcomes, registered, run = run_suite(suite, tmp_path, deselect, dbfix=True)
    assert outcomes.keys() == baseline.keys(), {
        "only without the package": sorted(baseline.keys() - outcomes.keys()),
        "only with it": sorted(outcomes.keys() - baseline.keys()),
    }
    # A test that failed without the package may end any way with it; a test that passed
    # (or was skipped) without it must end the same way with it.
    changed = {
        test: f"{baseline[test]} -> {outcome}"
        for test, outcome in sorted(outcomes.items())
        if baseline[test] != "failed" and baseline[test] != outcome
    }
    assert changed == {}, f"{len(changed)} test(s) of SQLAlchemy's own suite changed: {changed}"
    # What JUnit does not show: an error at session end (SQLAlchemy checks for leaked
    # connections there), or a warning raised after the last test.
    if plain.returncode == 0:
        assert run.returncode == 0, f"exit status {run.returncode}:\n{run.stdout[-4000:]}"
    # The package was really there: the suite's own engines were registered with it.
    assert registered["engines"] > 50, registered
