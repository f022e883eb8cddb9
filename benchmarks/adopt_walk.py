"""What register() costs for engines whose connections were checked out before the package
was switched on, in a large heap: it must walk the heap once, not once per engine.

    python -m benchmarks.adopt_walk [--engines N] [--objects M[,M...]]

Per heap size (default 1M and 3M extra gc-tracked objects), registers N engines (SQLite
files, each with one connection held by a Connection) two ways, side by side in one run:
``one walk`` (the package as shipped: one walk serves every engine) and ``walk per engine``
(the walk's findings forgotten before each register(), which is what every register()
did before). Prints seconds, walks, and the ratio.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine

from flask_uwsgi_dbfix import engines, register


def run(directory: Path, count: int, forget_between: bool) -> tuple[float, int]:
    made = [create_engine(f"sqlite:///{directory / f'{n}.db'}") for n in range(count)]
    held = [engine.connect() for engine in made]
    walks = 0
    real = gc.get_objects

    def counting(*args: Any) -> list[Any]:
        nonlocal walks
        walks += 1
        return real(*args)

    engines.gc.get_objects = counting  # type: ignore[attr-defined]
    try:
        started = time.perf_counter()
        for n, engine in enumerate(made):
            if forget_between:
                engines._walked.clear()
            register(engine, name=f"bench-{n}")
        took = time.perf_counter() - started
    finally:
        engines.gc.get_objects = real  # type: ignore[attr-defined]
        for conn in held:
            conn.close()
        for engine in made:
            engine.dispose()
    return took, walks


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.adopt_walk")
    parser.add_argument("--engines", type=int, default=50)
    parser.add_argument("--objects", default="1000000,3000000", help="extra heap sizes")
    args = parser.parse_args(argv)
    try:
        sizes = [int(x) for x in args.objects.split(",")]
    except ValueError:
        parser.error("--objects takes numbers separated by commas")
    if args.engines < 1 or any(size < 0 for size in sizes):
        parser.error("--engines must be at least 1 and --objects not negative")
    print(f"{args.engines} engines, each with a connection checked out before register()")
    print("extra objects   one walk: s (walks)   walk per engine: s (walks)   ratio")
    for size in sizes:
        ballast = [[] for _ in range(size)]  # gc-tracked: every walk visits them
        with tempfile.TemporaryDirectory(prefix="dbfix-adopt-") as tmp:
            (Path(tmp) / "a").mkdir()
            (Path(tmp) / "b").mkdir()
            one, one_walks = run(Path(tmp) / "a", args.engines, False)
            each, each_walks = run(Path(tmp) / "b", args.engines, True)
        del ballast
        print(
            f"{size:>13,}   {one:>8.3f} ({one_walks:>3})          "
            f"{each:>8.3f} ({each_walks:>3})               {each / one:>6.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
