"""How the uWSGI ini reader's time grows with hostile input: it must grow linearly.

    python -m benchmarks.ini_reader [--rounds N]

Values full of unclosed ``%(``, ``$(`` and ``@(`` openers (each opener once had to scan
to the end of the value for its ``)``, per expansion pass: quadratic), at 1x, 10x and
100x the base size, side by side in one run. Prints seconds per size and the ratio to 1x
divided by the size factor: about 1 is linear, about the size factor is quadratic.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from flask_uwsgi_dbfix.check.uwsgi_ini import read_ini

BASE_OPENERS = 500  # 1x: 500 of each opener (~4.5 KB); 100x is ~450 KB, under the 1 MiB cap
FACTORS = (1, 10, 100)


def hostile_ini(directory: Path, openers: int) -> Path:
    value = "%(" * openers + "$(" * openers + "@(" * openers + "x"
    path = directory / f"hostile-{openers}.ini"
    path.write_text(f"[uwsgi]\nmaster = true\nprocesses = 4\nplugins = {value}\n")
    return path


def seconds_to_read(path: Path, rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        read_ini(path)
        best = min(best, time.perf_counter() - started)
    return best


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.ini_reader")
    parser.add_argument("--rounds", type=int, default=5, help="best of N reads per size")
    args = parser.parse_args(argv)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    with tempfile.TemporaryDirectory(prefix="dbfix-ini-bench-") as tmp:
        files = {f: hostile_ini(Path(tmp), BASE_OPENERS * f) for f in FACTORS}
        times = {f: seconds_to_read(path, args.rounds) for f, path in files.items()}
    print("size   openers   bytes     best s    (s / s@1x) / size factor")
    for factor in FACTORS:
        size = BASE_OPENERS * factor * 6
        ratio = times[factor] / times[1] / factor
        openers = BASE_OPENERS * factor * 3
        print(f"{factor:>3}x  {openers:>8}  {size:>8}  {times[factor]:>9.4f}  {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
