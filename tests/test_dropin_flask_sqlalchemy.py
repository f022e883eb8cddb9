"""A drop-in never breaks what worked: Flask-SQLAlchemy's own suite, with us added.

Runs the test suite shipped in the installed Flask-SQLAlchemy version's sdist (downloaded
by scripts/setup.sh) three times: as is, with FlaskDBFix initialised before every
``db.init_app``, and after it (the three side by side, each in its own copy of the sdist).
Compared test by test: a test that fails without the
extension may fail with it, nothing else may change. How many of that suite's tests pass
depends on the SQLAlchemy release (Flask-SQLAlchemy 3.1.1 predates SQLAlchemy 2.1, where
about a third of its own tests fail with or without us), so no count of passes is assumed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.junit import junit_outcomes

ROOT = Path(__file__).resolve().parent.parent
VERSION = importlib.metadata.version("flask-sqlalchemy")
SDIST = ROOT / ".thirdparty" / f"flask_sqlalchemy-{VERSION}.tar.gz"


def unpacked(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert SDIST.exists(), f"{SDIST} is missing: run `bash scripts/setup.sh` first"
    target = tmp_path_factory.mktemp("fsa")
    with tarfile.open(SDIST) as archive:
        archive.extractall(target, filter="data")
    return target / f"flask_sqlalchemy-{VERSION}"


class SuiteRun:
    """One run of the suite in the background (``order``: None without the extension,
    else where ``init_app`` goes); :meth:`result` waits for it."""

    def __init__(self, suite: Path, tmp_path: Path, order: str | None) -> None:
        self.order = order
        self.junit, self.report = tmp_path / f"{order}.xml", tmp_path / f"{order}.json"
        # Not PYTEST_ADDOPTS: options meant for our own run (CI adds a JUnit file) stay ours.
        env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
        env["PYTHONPATH"] = str(Path(__file__).parent / "dropin")
        args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
        args.append(f"--junitxml={self.junit}")
        if order is not None:
            env |= {"DBFIX_DROPIN_ORDER": order, "DBFIX_DROPIN_REPORT": str(self.report)}
            args += ["-p", "dbfix_dropin"]
        self.process = subprocess.Popen(
            [*args, "tests"],
            cwd=suite,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def result(self) -> tuple[dict[str, str], dict[str, int]]:
        """Outcome per test id, and what the plugin managed (empty without it)."""
        try:
            self.process.wait(timeout=600)
        finally:
            self.stop()
        outcomes = junit_outcomes(self.junit)
        managed = json.loads(self.report.read_text()) if self.order is not None else {}
        return outcomes, managed


def test_flask_sqlalchemy_suite_has_the_same_outcomes_with_the_extension(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    runs: list[SuiteRun] = []
    try:
        for order in (None, "before", "after"):
            runs.append(SuiteRun(unpacked(tmp_path_factory), tmp_path, order))
        baseline, _ = runs[0].result()
        assert len(baseline) > 400, f"the suite did not run: {len(baseline)} test cases"
        assert "passed" in baseline.values(), "not one of the suite's tests passed"
        for run in runs[1:]:
            outcomes, managed = run.result()
            order = run.order
            assert outcomes.keys() == baseline.keys()
            # A test that failed without the extension may end any way with it; a test that
            # passed (or was skipped) without it must end the same way with it.
            changed = {
                t: (baseline[t], o)
                for t, o in outcomes.items()
                if baseline[t] != "failed" and baseline[t] != o
            }
            assert changed == {}, f"dbfix.init_app {order} db.init_app changed: {changed}"
            # The extension was really there: on every app the suite made, tracking engines
            # (in-memory SQLite, which most of that suite uses, is left alone).
            assert managed["apps"] > 0 and managed["apps_without_dbfix"] == 0, managed
            assert managed["engines"] > 0, managed
    finally:  # never leave a run behind (an assertion, a time-out, Ctrl-C)
        for run in runs:
            run.stop()
