"""A drop-in never breaks what worked: Flask-SQLAlchemy's own suite, with us added.

Runs the test suite shipped in the installed Flask-SQLAlchemy version's sdist (downloaded
by scripts/setup.sh) three times: as is, with FlaskDBFix initialised before every
``db.init_app``, and after it. The outcomes must be identical, test by test.
"""

from __future__ import annotations

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
VERSION = importlib.metadata.version("flask-sqlalchemy")
SDIST = ROOT / ".thirdparty" / f"flask_sqlalchemy-{VERSION}.tar.gz"


@pytest.fixture(scope="module")
def suite(tmp_path_factory: pytest.TempPathFactory) -> Path:
    assert SDIST.exists(), f"{SDIST} is missing: run `bash scripts/setup.sh` first"
    target = tmp_path_factory.mktemp("fsa")
    with tarfile.open(SDIST) as archive:
        archive.extractall(target, filter="data")
    return target / f"flask_sqlalchemy-{VERSION}"


def run_suite(
    suite: Path, tmp_path: Path, order: str | None
) -> tuple[dict[str, str], dict[str, int]]:
    """Outcome per test id, and what the plugin managed (empty without it)."""
    junit, report = tmp_path / f"{order}.xml", tmp_path / f"{order}.json"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parent / "dropin")}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={junit}"]
    if order is not None:
        env |= {"DBFIX_DROPIN_ORDER": order, "DBFIX_DROPIN_REPORT": str(report)}
        args += ["-p", "dbfix_dropin"]
    subprocess.run([*args, "tests"], cwd=suite, env=env, capture_output=True, timeout=600)
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcome = "failed" if failed else "skipped" if skipped else "passed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    managed = json.loads(report.read_text()) if order is not None else {}
    return outcomes, managed


def test_flask_sqlalchemy_suite_has_the_same_outcomes_with_the_extension(
    suite: Path, tmp_path: Path
) -> None:
    baseline, _ = run_suite(suite, tmp_path, None)
    assert sum(o == "passed" for o in baseline.values()) > 400, "the suite did not run"
    for order in ("before", "after"):
        outcomes, managed = run_suite(suite, tmp_path, order)
        changed = {t: (baseline.get(t), o) for t, o in outcomes.items() if baseline.get(t) != o}
        assert changed == {}, f"dbfix.init_app {order} db.init_app changed: {changed}"
        assert outcomes.keys() == baseline.keys()
        # The extension was really there: on every app, tracking file-backed engines.
        assert managed["apps"] > 300, managed
        assert managed["engines"] > 10, managed  # in-memory SQLite is left alone
