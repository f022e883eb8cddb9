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
``sys.path``. A run takes about 30 s on a 2-core machine, mostly the pool tests' sleeps;
the three runs go side by side: the plain run of the whole folder (the baseline of both
comparisons: the deselected classes only clear listeners, and a plain run has none of the
package's), and the two runs with the package.
"""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.junit import junit_outcomes

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


def _unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
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


class SuiteRun:
    """One run of the suite in the background: :meth:`result` waits for it."""

    def __init__(
        self, suite: Path, tmp_path: Path, deselect: list[str], dbfix: bool, label: str
    ) -> None:
        self.label = label
        self._result: tuple[dict[str, str], dict[str, int], int, str] | None = None
        self.junit, self.report = tmp_path / f"{self.label}.xml", tmp_path / f"{self.label}.json"
        self.dbfix = dbfix
        # Not PYTEST_ADDOPTS: options meant for our own run (CI adds a JUnit file) stay ours.
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
        # ROOT: the flask_uwsgi_dbfix next to these tests (or, when absent, the installed one).
        env["PYTHONPATH"] = os.pathsep.join([str(DROPIN), str(ROOT)])
        args = [sys.executable, "-s", "-m", "pytest", SUITE, "-p", "no:cacheprovider"]
        args += [f"--junitxml={self.junit}", *(f"--deselect={prefix}" for prefix in deselect)]
        if dbfix:
            env["DBFIX_DROPIN_REPORT"] = str(self.report)
            args += ["-p", "sqlalchemy_dropin"]
        self.log = tmp_path / f"{self.label}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                args, cwd=suite, env=env, stdout=log, stderr=subprocess.STDOUT, text=True
            )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def result(self) -> tuple[dict[str, str], dict[str, int], int, str]:
        """Outcome per test id, what the plugin registered (empty without it), the exit
        status and the end of the output (read once: two tests share the plain run)."""
        if self._result is not None:
            return self._result
        try:
            returncode = self.process.wait(timeout=TIMEOUT)
        finally:
            self.stop()
        output = self.log.read_text()[-4000:]
        assert self.junit.exists(), f"the {self.label} run did not start:\n{output}"
        outcomes = junit_outcomes(self.junit)
        registered = json.loads(self.report.read_text()) if self.dbfix else {}
        self._result = outcomes, registered, returncode, output
        return self._result


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, SuiteRun]]:
    """The three runs, started together, each in its own copy of the sdist (the suite writes
    its SQLite files into the working directory), stopped at the end whatever happened."""
    copies = [_unpacked(tmp_path_factory) for _ in range(3)]
    deselect = classes_clearing_listeners(copies[0])
    assert deselect, "no test class clears class-level listeners any more"
    logs = tmp_path_factory.mktemp("runs")
    started: dict[str, SuiteRun] = {}
    try:
        started["plain"] = SuiteRun(copies[0], logs, [], dbfix=False, label="plain")
        started["whole"] = SuiteRun(copies[1], logs, [], dbfix=True, label="whole")
        started["isolated"] = SuiteRun(copies[2], logs, deselect, dbfix=True, label="isolated")
        yield started
    finally:  # never leave a run behind (an assertion, a time-out, Ctrl-C)
        for run in started.values():
            run.stop()


@pytest.mark.parametrize(
    "variant", ["whole", "isolated"], ids=["whole", "without-listener-clearing"]
)
def test_sqlalchemy_engine_suite_has_the_same_outcomes_with_every_engine_registered(
    runs: dict[str, SuiteRun], variant: str
) -> None:
    all_baseline, _, plain_status, _ = runs["plain"].result()
    outcomes, registered, status, output = runs[variant].result()
    assert len(all_baseline) > 500, f"the suite did not run: {len(all_baseline)} test cases"
    assert "passed" in all_baseline.values(), "not one of the suite's tests passed"
    only_with = sorted(outcomes.keys() - all_baseline.keys())
    assert only_with == [], f"tests that ran only with the package: {only_with}"
    if variant == "whole":
        only_without = sorted(all_baseline.keys() - outcomes.keys())
        assert only_without == [], f"tests that ran only without the package: {only_without}"
    else:
        assert len(outcomes) < len(all_baseline), "no test class was deselected"
    # The isolated run's baseline: the plain run's outcomes of the tests it ran.
    baseline = {test: all_baseline[test] for test in outcomes}
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
    if plain_status == 0:
        assert status == 0, f"exit status {status}:\n{output}"
    # The package was really there: the suite's own engines were registered with it.
    assert registered["engines"] > 50, registered
