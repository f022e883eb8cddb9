"""The small benchmarks run and print what they claim (their figures are not asserted:
these machines are shared and noisy; benchmarks/ compares side by side in one run)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bench(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_adopt_walk_counts_one_walk_against_one_per_engine() -> None:
    done = bench("adopt_walk", "--engines", "4", "--objects", "1000")
    assert done.returncode == 0, done.stderr
    (row,) = [line for line in done.stdout.splitlines() if line.strip().startswith("1,000")]
    assert re.findall(r"\(\s*(\d+)\)", row) == ["1", "4"]


def test_ini_reader_prints_every_size() -> None:
    done = bench("ini_reader", "--rounds", "1")
    assert done.returncode == 0, done.stderr
    sizes = [line.split()[0] for line in done.stdout.splitlines()[1:]]
    assert sizes == ["1x", "10x", "100x"]


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("adopt_walk", ("--objects", "x")),
        ("adopt_walk", ("--engines", "0")),
        ("ini_reader", ("--rounds", "0")),
    ],
)
def test_bad_arguments_get_a_message_and_exit_2(module: str, args: tuple[str, ...]) -> None:
    done = bench(module, *args)
    assert done.returncode == 2
    assert "error:" in done.stderr and "Traceback" not in done.stderr


# The report of benchmarks/: rendered from the committed full run, no server started.
RESULTS = ROOT / "benchmarks" / "results" / "benchmarks.json"


def committed_run(*, repeats: int | None = None) -> dict[str, Any]:
    """The committed full run; with ``repeats``, only its first repeats, as --quick makes."""
    from benchmarks import report

    data: dict[str, Any] = json.loads(RESULTS.read_text())
    if repeats is not None:
        data["runs"] = [r for r in data["runs"] if r["repeat"] < repeats]
        data["repeats"] = repeats
    data["summary"] = report.summarize(data)
    return data


def test_the_printed_report_fits_in_100_columns() -> None:
    from benchmarks import report

    lines = report.table(committed_run()).splitlines()

    too_wide = [line for line in lines if len(line) > 100]
    assert too_wide == []
    assert "prefork + fix, no DB work at import" in "\n".join(lines)  # labels, not keys


def test_a_run_of_one_repeat_is_not_judged_against_the_targets() -> None:
    """One repeat on a shared machine says nothing about a 2 % target: no MISSED, a note."""
    from benchmarks import report

    one = report.table(committed_run(repeats=1))
    full = report.table(committed_run())

    assert "MISSED" not in one
    assert "  not judged: 1 repeat; use the full run (python -m benchmarks)" in one.splitlines()
    assert "MISSED" in full and "not judged" not in full  # the full run is still judged


def test_progress_lines_name_each_mode_by_its_table_label() -> None:
    from benchmarks import report
    from benchmarks.servers import RunResult

    line = report.progress_line(3, 10, RunResult("fix_clean", 4, 0), "prefork + fix, no DB")

    assert line.startswith("[3/10] prefork + fix, no DB, 4 workers, repeat 1\n")
    assert "fix_clean" not in line


def test_quick_results_are_ignored_by_git() -> None:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    ignored = subprocess.run(
        ["git", "check-ignore", "-q", "benchmarks/results/quick/benchmarks.json"],
        cwd=ROOT,
        timeout=30,
    )
    assert ignored.returncode == 0


def test_rerendering_needs_a_directory_with_results(tmp_path: Path) -> None:
    done = bench("report", str(tmp_path))
    assert done.returncode == 2
    assert "usage: python -m benchmarks.report DIR" in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
