"""Cost of the pid guard per ``engine.connect()``, side by side in one run.

Prints the per-checkout overhead of SQLAlchemy's documented recipe and of ours over an
unguarded engine, and their ratio. Target: ours at most a third of the recipe's.

    python benchmarks/pid_guard.py
"""

from __future__ import annotations

import os
import statistics
import tempfile
import timeit
from collections.abc import Callable

from sqlalchemy import Engine, create_engine, event, exc

from flask_uwsgi_dbfix import tracking

ROUNDS, NUMBER = 200, 2_000


def recipe(engine: Engine) -> None:
    """https://docs.sqlalchemy.org/en/20/core/pooling.html#pooling-multiprocessing"""

    @event.listens_for(engine, "connect")
    def connect(dbapi_connection: object, record: object) -> None:
        record.info["pid"] = os.getpid()  # type: ignore[attr-defined]

    @event.listens_for(engine, "checkout")
    def checkout(dbapi_connection: object, record: object, proxy: object) -> None:
        pid = os.getpid()
        if record.info["pid"] != pid:  # type: ignore[attr-defined]
            record.dbapi_connection = proxy.dbapi_connection = None  # type: ignore[attr-defined]
            raise exc.DisconnectionError("pid changed")


def ours(engine: Engine) -> None:
    tracking.track(engine, pid_guard=True)


def plain(engine: Engine) -> None:
    pass


def connect_loop(setup: Callable[[Engine], None], path: str) -> Callable[[], None]:
    engine = create_engine(f"sqlite:///{path}")
    setup(engine)
    engine.connect().close()  # open the pooled connection outside the timing

    def once() -> None:
        engine.connect().close()

    return once


def main() -> None:
    setups = {"plain": plain, "recipe": recipe, "ours": ours}
    samples: dict[str, list[float]] = {name: [] for name in setups}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "bench.db")
        for _ in range(ROUNDS):  # round-robin, so machine noise hits all three alike,
            for name, setup in setups.items():  # on fresh engines, so no one layout decides
                loop = connect_loop(setup, path)
                samples[name].append(timeit.timeit(loop, number=NUMBER) / NUMBER * 1e9)
    best = {name: statistics.median(sorted(s)[: len(s) // 4]) for name, s in samples.items()}
    recipe_cost = best["recipe"] - best["plain"]
    ours_cost = best["ours"] - best["plain"]
    print(f"engine.connect()+close(), median of the fastest quarter of {ROUNDS} rounds")
    for name in setups:
        print(f"  {name:7s} {best[name]:8.0f} ns")
    print(f"  recipe overhead {recipe_cost:6.0f} ns ({recipe_cost / best['plain']:+.1%})")
    print(f"  ours overhead   {ours_cost:6.0f} ns ({ours_cost / best['plain']:+.1%})")
    print(f"  ratio ours/recipe: {ours_cost / recipe_cost:.2f} (target <= 0.33)")


if __name__ == "__main__":
    main()
