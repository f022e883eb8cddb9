"""``python -m benchmarks.import_cost`` runs end to end and prints every row of its table.

No timing is asserted (the machines are shared); the figures are for people, see
docs/benchmarks.md.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from tests.test_benchmarks import bench

POOLS = ("NullPool", "QueuePool")
ROWS = (
    "(a) plain SQLAlchemy",
    "(b) import flask_uwsgi_dbfix",
    "(c0) other app, no FlaskDBFix",
    "(c) + FlaskDBFix(other app)",
    "(d) register(engine)",
    "(d) vs twin, same interpreter",
    "(f) process-wide mode",
    "(f) vs twin, same interpreter",
)
NULLPOOL_ONLY = ("(e) of it: the opener's line",)


def import_cost(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return bench(*args, module="benchmarks.import_cost", timeout=timeout)


def test_import_cost_prints_every_row(tmp_path: Path) -> None:
    raw = tmp_path / "import_cost.json"
    done = import_cost("--rounds", "1", "--calls", "200", "--json", str(raw))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    for pool in POOLS:
        for row in ROWS + (NULLPOOL_ONLY if pool == "NullPool" else ()):
            assert re.search(rf"^  {pool} +{re.escape(row)} +\d", out, re.M), (pool, row, out)
    for row in ("import flask_uwsgi_dbfix", "after import flask, sqlalchemy"):
        assert re.search(rf"^ +{re.escape(row)} +\d+ \[\d+\.\.\d+\]", out, re.M), (row, out)
    for fact in (
        "bare import added a listener to a fresh pool or engine",
        "bare import called os.register_at_fork",
        "FlaskDBFix(other app) added a listener to an engine it does not manage",
    ):
        assert re.search(rf"^  {re.escape(fact)}: (yes|no)", out, re.M), (fact, out)
    data = json.loads(raw.read_text())
    assert data["rounds"] == 1 and data["calls_per_round"] == 200
    for pool in POOLS:
        for variant in (
            "plain",
            "import",
            "other_app_bare",
            "other_app",
            "registered",
            "process_wide",
        ):
            assert len(data["connect"]["samples_ns"][variant][pool]) == 1  # one per round


def test_a_bad_argument_gets_a_message_not_a_traceback() -> None:
    done = import_cost("--rounds", "0", timeout=60)
    assert done.returncode == 2, done.stderr
    assert "at least 1" in done.stderr and "Traceback" not in done.stderr, done.stderr
