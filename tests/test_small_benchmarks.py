"""The small benchmarks run and print what they claim (their figures are not asserted:
these machines are shared and noisy; benchmarks/ compares side by side in one run)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

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
