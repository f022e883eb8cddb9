"""The app the benchmark serves: a mid-size Flask + Flask-SQLAlchemy service.

Its import builds what a real mid-size app carries in memory, identical in every mode:
  * 120 SQLAlchemy models of 14 columns each, with a relationship to the previous one
    (mappers, tables, column objects, compiled loaders),
  * a routing table of 600 URL rules (werkzeug rules with compiled converters),
  * cached reference data: 80,000 catalogue rows as dicts (sku, name, price, tags, ...),
    as an app that loads a product catalogue or a postal-code table at start-up would.
Together well over 50 MB of Python objects (the JSON records the measured RSS growth).

Only the database work at import differs between modes. Environment:
  DATABASE_URL            the database (required)
  BENCH_IMPORT_QUERY      "1": query the database while the app is created (the bug pattern:
                          the master then holds a pooled connection when it forks); "0": none
  BENCH_FIX               "1": FlaskDBFix(app); "0": no fix
  BENCH_CLOSE_BEFORE_FORK "0"/"1": sets DBFIX_CLOSE_BEFORE_FORK, only if this version of the
                          package knows that key (older ones reject unknown DBFIX_ keys)
  BENCH_SCALE             multiplies the models, routes and rows (default 1; --quick uses
                          0.25 to fit in CI time: its memory figures are not the headline)
"""

from __future__ import annotations

import os
import resource
import time
from typing import Any

from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import ForeignKey, Integer, Numeric, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from flask_uwsgi_dbfix import DBFixConfig, FlaskDBFix

SCALE = float(os.environ.get("BENCH_SCALE", "1"))
MODELS, COLUMNS, ROUTES = max(1, round(120 * SCALE)), 14, max(1, round(600 * SCALE))
ROWS = max(1, round(80_000 * SCALE))
IMPORT_QUERY = os.environ.get("BENCH_IMPORT_QUERY", "1") == "1"
FIX = os.environ.get("BENCH_FIX", "0") == "1"
CLOSE_BEFORE_FORK = os.environ.get("BENCH_CLOSE_BEFORE_FORK", "")
CLOSE_BEFORE_FORK_KNOWN = "close_before_fork" in DBFixConfig.__dataclass_fields__


def _rss_kib() -> int:
    """Resident set size now (not the peak: uWSGI's start-up may have peaked higher)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024


_started, _rss_before = time.perf_counter(), _rss_kib()


class Base(DeclarativeBase):
    pass


app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
if CLOSE_BEFORE_FORK and CLOSE_BEFORE_FORK_KNOWN:
    app.config["DBFIX_CLOSE_BEFORE_FORK"] = CLOSE_BEFORE_FORK == "1"
db = SQLAlchemy(app, model_class=Base)
if FIX:
    FlaskDBFix(app)


def _make_model(i: int) -> type[Any]:
    """One table with a foreign key to the previous one, as an ORM model."""
    attrs: dict[str, Any] = {
        "__tablename__": f"entity_{i}",
        "id": mapped_column(Integer, primary_key=True),
        "name": mapped_column(String(200), index=True),
        "description": mapped_column(Text, nullable=True),
        "price": mapped_column(Numeric(12, 2), default=0),
    }
    for c in range(COLUMNS - 4):
        attrs[f"attr_{c}"] = mapped_column(String(50), nullable=True)
    if i:
        attrs["parent_id"] = mapped_column(ForeignKey(f"entity_{i - 1}.id"), nullable=True)
        attrs["parent"] = relationship(f"Entity{i - 1}")
    attrs["__annotations__"] = {"id": Mapped[int]}
    return type(f"Entity{i}", (db.Model,), attrs)


MODEL_CLASSES = [_make_model(i) for i in range(MODELS)]
Base.registry.configure()  # mappers are configured on first use in real apps; do it now


def _make_view(n: int) -> Any:
    def view(item_id: int) -> Any:
        return jsonify({"route": n, "id": item_id})

    view.__name__ = f"resource_{n}"
    return view


for _n in range(ROUTES):
    app.add_url_rule(f"/api/v1/resource{_n}/<int:item_id>", view_func=_make_view(_n))
app.url_map.update()  # compile the routing table now, as the first request would

_COLOURS = ("red", "green", "blue", "black", "white", "grey", "navy", "olive")
CATALOGUE: list[dict[str, Any]] = [
    {
        "sku": f"SKU-{i:08d}",
        "name": f"Product {i} {_COLOURS[i % 8]}",
        "price": (i % 10_000) / 100,
        "stock": i % 97,
        "tags": [_COLOURS[i % 8], _COLOURS[(i * 3) % 8]],
        "category": i % 250,
    }
    for i in range(ROWS)
]
BY_SKU = {row["sku"]: row for row in CATALOGUE}

# What the import built, for the report: wall time and RSS growth of this process.
BUILD = {
    "seconds": time.perf_counter() - _started,
    "rss_growth_mib": (_rss_kib() - _rss_before) / 1024,
    "models": MODELS,
    "routes": len(app.url_map._rules),
    "catalogue_rows": ROWS,
    "scale": SCALE,
}

PROBE = text("SELECT pg_backend_pid()")

if IMPORT_QUERY:
    # The bug pattern: the app reads from the database while it is created, so the master
    # holds an idle pooled connection when uWSGI forks the workers.
    with app.app_context():
        SERVER_VERSION = db.session.execute(text("SHOW server_version")).scalar()


@app.get("/ping")
def ping() -> Any:
    """Readiness probe, no database. Holds the worker 25 ms so that parallel probes
    spread over all workers instead of all landing on the first one that is free."""
    time.sleep(0.025)
    return jsonify({"pid": os.getpid()})


@app.get("/query")
def query() -> Any:
    """A typical small request: one query, a lookup in the cached data, JSON out."""
    backend = db.session.execute(PROBE).scalar()
    row = BY_SKU[f"SKU-{(backend or 0) % ROWS:08d}"]
    return jsonify({"pid": os.getpid(), "backend": backend, "sku": row["sku"]})


@app.get("/build")
def build() -> Any:
    return jsonify(BUILD | {"close_before_fork_known": CLOSE_BEFORE_FORK_KNOWN})


@app.errorhandler(Exception)
def error(exc: Exception) -> Any:
    lines = str(exc).strip().splitlines()
    return jsonify({"pid": os.getpid(), "error": lines[0] if lines else type(exc).__name__}), 500
