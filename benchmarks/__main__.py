"""``python -m benchmarks [--quick]``: every mode side by side in one run; see docs/benchmarks.md.

Serves the bench app (or ``--app``) under real uWSGI against PostgreSQL with SSL (the
harness starts one, unless ``DATABASE_URL`` is set), measures each mode at each worker
count, repeats, times the pid guard, then writes JSON, the table and PNG charts to ``--out``.
Exits 1 if any request failed or any instance did not come up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from benchmarks import fix_parts, pid_guard, report
from benchmarks.servers import (
    BENCH_APP,
    Load,
    Mode,
    as_dict,
    bench_modes,
    run_one,
    user_modes,
)
from flask_uwsgi_dbfix import DBFixConfig
from harness.uwsgi import uwsgi_command

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Memory, start-up, throughput, server connections and pid-guard cost of "
        "prefork + fix against bare prefork and lazy-apps, under real uWSGI.",
    )
    p.add_argument("--quick", action="store_true", help="short run for CI: 2 and 4 workers, once")
    p.add_argument("--workers", type=int, nargs="+", help="worker counts (default 2 4 8 16)")
    p.add_argument("--repeats", type=int, help="runs per mode and worker count (default 5)")
    p.add_argument("--requests", type=int, help="timed requests per run (default 1000)")
    p.add_argument("--concurrency", type=int, default=16, help="client concurrency (16)")
    p.add_argument("--guard-rounds", type=int, help="pid guard rounds (default 200)")
    p.add_argument(
        "--app",
        help="serve your WSGI app instead (uWSGI --module syntax, e.g. myproj.wsgi:app); "
        "runs 'prefork' and 'lazy-apps'. DATABASE_URL is passed to it.",
    )
    p.add_argument(
        "--app-dir",
        type=Path,
        help="with --app: your project's directory; uWSGI runs there with it on the Python "
        "path (default: this repository, for an app installed into .venv)",
    )
    p.add_argument(
        "--label",
        default="",
        help="with --app: what this run is (e.g. 'with FlaskDBFix'), shown in the table",
    )
    p.add_argument("--path", default="/query", help="path the load hits (JSON object, 200)")
    p.add_argument(
        "--ready-path", default="/ping", help="path probed until every worker has answered"
    )
    p.add_argument("--out", type=Path, help="output dir (default benchmarks/results[/quick])")
    args = p.parse_args(argv)
    quick = args.quick
    args.workers = args.workers or ([2, 4] if quick else [2, 4, 8, 16])
    args.repeats = args.repeats or (1 if quick else 5)
    args.requests = args.requests or (100 if quick else 1000)
    args.guard_rounds = args.guard_rounds or (10 if quick else 200)
    args.scale = 0.25 if quick else 1.0
    args.out = args.out or (RESULTS / "quick" if quick else RESULTS)
    if any(w < 1 for w in args.workers) or args.repeats < 1 or args.requests < 1:
        p.error("--workers, --repeats and --requests must be positive")
    if args.app and ":" not in args.app and not args.app.endswith(".py"):
        p.error(f"--app {args.app!r}: expected module:callable (as uWSGI's --module takes)")
    if (args.app_dir or args.label) and not args.app:
        p.error("--app-dir and --label go with --app")
    if args.app_dir is not None:
        if not args.app_dir.is_dir():
            p.error(f"--app-dir {str(args.app_dir)!r}: no such directory")
        args.app_dir = args.app_dir.resolve()
    return args


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def machine_and_versions() -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
        cpu = found.group(1) if found else cpu
    uwsgi = subprocess.run([uwsgi_command(), "--version"], capture_output=True, text=True)
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "cpu": cpu,
            "kernel": platform.release(),
            "loadavg_at_start": os.getloadavg(),
        },
        "versions": {
            "python": platform.python_version(),
            "uwsgi": uwsgi.stdout.strip(),
            "flask": _version("flask"),
            "flask-sqlalchemy": _version("flask-sqlalchemy"),
            "sqlalchemy": _version("sqlalchemy"),
            "psycopg2": _version("psycopg2-binary"),
            "flask-uwsgi-dbfix": _version("flask-uwsgi-dbfix"),
        },
    }


@contextlib.contextmanager
def database() -> Iterator[tuple[str, Callable[[], int | None], str, str]]:
    """(URL for the app, connection counter, masked URL, server version)."""
    user_url = os.environ.get("DATABASE_URL")
    if user_url:
        from sqlalchemy import create_engine, text
        from sqlalchemy.pool import NullPool

        engine = create_engine(user_url, poolclass=NullPool)
        masked = engine.url.render_as_string(hide_password=True)

        def count_user() -> int | None:
            try:
                with engine.connect() as conn:
                    return int(
                        conn.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity WHERE datname ="
                                " current_database() AND pid <> pg_backend_pid()"
                                " AND backend_type = 'client backend'"
                            )
                        ).scalar_one()
                    )
            except Exception:
                return None

        version = "unknown"
        with contextlib.suppress(Exception), engine.connect() as conn:
            version = str(conn.execute(text("SHOW server_version")).scalar())
        try:
            yield user_url, count_user, masked, version
        finally:
            engine.dispose()
        return

    from harness.postgres import start_postgres, stop_postgres

    server = start_postgres()
    try:

        def count_harness() -> int | None:
            with contextlib.closing(server.admin_connect()) as conn, conn.cursor() as cur:
                cur.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                    " AND backend_type = 'client backend'",
                    (server.dbname,),
                )
                return int(cur.fetchone()[0])

        with contextlib.closing(server.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute("SHOW server_version")
            version = str(cur.fetchone()[0])
        yield server.url(), count_harness, server.masked_url(), version
    finally:
        stop_postgres(server)


def _rotated(modes: list[Mode], k: int) -> list[Mode]:
    k %= len(modes)
    return modes[k:] + modes[:k]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C or SIGTERM must stop the servers we started. A shell that starts a job in the
    # background (nohup ... &) hands it SIGINT ignored, so install the handlers ourselves.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    started = time.monotonic()
    meta = machine_and_versions()
    known = "close_before_fork" in DBFixConfig.__dataclass_fields__
    modes = user_modes() if args.app else bench_modes(known)
    load = Load(
        path=args.path,
        ready_path=args.ready_path,
        warmup=20 if args.quick else max(60, 10 * max(args.workers)),
        requests=args.requests,
        concurrency=args.concurrency,
    )
    build: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    log_root = Path(tempfile.mkdtemp(prefix="dbfix-bench-"))
    with database() as (url, count_connections, masked_url, pg_version):
        meta["versions"]["postgresql"] = pg_version
        meta["database"] = masked_url
        main_modes = [m for m in modes if not m.connections_only and not m.unavailable]
        extra_modes = [m for m in modes if m.connections_only and not m.unavailable]
        plan = [
            (mode, workers, repeat)
            for repeat in range(args.repeats)
            for i, workers in enumerate(args.workers)
            # The connections-only modes: once per worker count (--quick: at the first one).
            for mode in _rotated(main_modes, repeat + i)
            + (extra_modes if repeat == 0 and (i == 0 or not args.quick) else [])
        ]
        for n, (mode, workers, repeat) in enumerate(plan, 1):
            result = run_one(
                mode,
                workers,
                repeat,
                app=args.app or BENCH_APP,
                database_url=url,
                scale=args.scale,
                load=load,
                count_connections=count_connections,
                log_root=log_root,
                build_path="" if args.app else "/build",
                build=build,
                app_dir=args.app_dir,
            )
            runs.append(as_dict(result))
            print(report.progress_line(n, len(plan), result, mode.label), flush=True)
    meta["machine"]["loadavg_before_guard"] = os.getloadavg()
    guard = pid_guard.run(args.guard_rounds)
    parts = fix_parts.run(5 if args.quick else 30)
    meta["machine"]["loadavg_at_end"] = os.getloadavg()
    meta["seconds"] = round(time.monotonic() - started, 1)
    data = {
        "meta": meta,
        "quick": args.quick,
        "command": " ".join(
            ["python -m benchmarks", *(argv if argv is not None else sys.argv[1:])]
        ),
        "app": args.app or BENCH_APP,
        "app_dir": str(args.app_dir) if args.app_dir else "",
        "label": args.label,
        "app_build": build,
        "load": load.__dict__,
        "workers": args.workers,
        "repeats": args.repeats,
        "modes": {
            m.name: {
                "label": m.label,
                "env": m.env,
                "uwsgi_options": list(m.options),
                "available": not m.unavailable,
                "note": m.unavailable,
                "connections_only": m.connections_only,
            }
            for m in modes
        },
        "runs": runs,
        "pid_guard": guard,
        "fix_parts": parts,
    }
    data["summary"] = report.summarize(data)
    json_path = args.out / "benchmarks.json"
    json_path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    table = report.table(data)
    (args.out / "benchmarks.txt").write_text(table + "\n")
    print(table)
    charts = report.charts(data, args.out)
    print(f"wrote {json_path}, {args.out / 'benchmarks.txt'}, " + ", ".join(map(str, charts)))
    bad = [r for r in runs if r["failed"] or r["error"] or r["ready_s"] is None]
    for r in bad:
        print(
            f"FAILED: {r['mode']} at {r['workers']} workers: {r['failed']} failed requests "
            f"{r['failures']} {r['error']} (logs: {r['log_dir']})",
            file=sys.stderr,
        )
    with contextlib.suppress(OSError):
        log_root.rmdir()
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
