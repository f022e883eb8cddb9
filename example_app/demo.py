"""Before/after demo: example_app under real uWSGI, without the fix, with it, with lazy-apps.

    python -m example_app.demo [--requests N] [--concurrency C] [--json] [--keep-logs]

Starts a throwaway PostgreSQL with SSL on (or uses ``$DATABASE_URL``, where the app creates
its two tables if missing), serves example_app from ``uwsgi.ini`` three times with the same
number of workers, sends each the same bounded load, and prints one side-by-side table.
Progress goes to stderr. Exit status: 0 only if the run with the fix had no failed request
and no worker on the master's connection; 1 otherwise; 130 when interrupted. Every process
and temporary directory it made is removed, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TextIO

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from example_app import database_url
from harness.load import LoadResult, run_load
from harness.postgres import start_postgres, stop_postgres
from harness.process import local_tcp_ports
from harness.uwsgi import UwsgiServer, start_uwsgi

ROOT = Path(__file__).resolve().parent.parent
INI = ROOT / "uwsgi.ini"
PROCESSES = 4  # the same in every run, so memory and backends compare like for like
LOAD_PATH = "/worker"
RUN_DEADLINE = 120.0  # seconds of load per run, at most


@dataclass(frozen=True)
class Mode:
    """One way of serving the app: a column of the table."""

    key: str
    title: str
    env: dict[str, str]
    options: tuple[str, ...] = ()


MODES = (
    # The extension's own off switch, read by create_app() from the environment.
    Mode("without_fix", "without fix", {"DBFIX_ENABLED": "0"}),
    # uwsgi.ini sets py-call-uwsgi-fork-hooks (uWSGI 2.0.21+): the master runs the
    # extension's before-fork hook and closes its idle connections itself (said here too,
    # for an ini without it).
    Mode("with_fix", "with fix", {"DBFIX_ENABLED": "1"}, ("--py-call-uwsgi-fork-hooks",)),
    # The usual advice instead of a fix: every worker imports the app itself.
    Mode("lazy_apps", "lazy-apps", {"DBFIX_ENABLED": "0"}, ("--lazy-apps",)),
)


@dataclass(frozen=True)
class RunResult:
    """What one run measured; the JSON output is ``asdict`` of this per mode."""

    requests: int
    failed: int
    failures: dict[str, int]
    """Error message (first line of the exception) -> how many requests failed with it."""
    workers: int
    """Worker processes that answered at least one request."""
    backends: int
    """Distinct PostgreSQL backends (server processes) seen across all workers."""
    shared_backends: int
    """Backends that answered for more than one worker process."""
    workers_on_master_backend: int
    """Workers that ran queries on the connection the master opened at startup."""
    all_ssl: bool
    pss_mib: float
    """Proportional set size of master + workers after the load (shared pages once)."""
    ready_seconds: float
    load_seconds: float
    master_connections: int | None = None
    """Connections the uWSGI master keeps open on the server once it forked its workers
    (from pg_stat_activity); ``None`` when it could not be measured."""


def summarize(
    load: LoadResult, pss_kib: int, ready_seconds: float, master_connections: int | None = None
) -> RunResult:
    """Reduce the ``/worker`` answers to the table's numbers.

    A failed request reports no backend, so the backend counts alone can look clean while
    the bug is there: the table shows both.
    """
    workers_by_backend: dict[int, set[int]] = {}
    on_master: set[int] = set()
    for body in load.ok:
        pid, backend, startup = body["pid"], body["backend"], body["startup"]
        workers_by_backend.setdefault(backend, set()).add(pid)
        # Under lazy-apps each worker made its own startup connection: that is no sharing.
        if startup["pid"] != pid and backend == startup["backend"]:
            on_master.add(pid)
    return RunResult(
        requests=load.requests,
        failed=load.failed,
        failures=dict(load.failures.most_common()),
        workers=len({body["pid"] for body in load.ok}),
        backends=len(workers_by_backend),
        shared_backends=sum(1 for pids in workers_by_backend.values() if len(pids) > 1),
        workers_on_master_backend=len(on_master),
        all_ssl=all(body["ssl"] is True for body in load.ok),
        pss_mib=round(pss_kib / 1024, 1),
        ready_seconds=round(ready_seconds, 2),
        load_seconds=round(load.seconds, 2),
        master_connections=master_connections,
    )


def master_connections(url: str, master_pid: int) -> int | None:
    """How many server connections the master holds: pg_stat_activity knows each
    client's port, /proc which ports are the master's."""
    ports = local_tcp_ports(master_pid)
    try:
        engine = create_engine(url, poolclass=NullPool)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT client_port FROM pg_stat_activity "
                        "WHERE client_port IS NOT NULL AND pid <> pg_backend_pid()"
                    )
                ).all()
        finally:
            engine.dispose()
    except Exception:  # a demo measure, never a reason to fail the demo
        return None
    return sum(port in ports for (port,) in rows)


def fixed_run_ok(result: RunResult) -> bool:
    return result.failed == 0 and result.workers_on_master_backend == 0


class Progress:
    """One status line on stderr: rewritten in place on a terminal, else only milestones."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.width = 0

    def show(self, message: str, *, milestone: bool = False) -> None:
        if self.tty:
            padding = " " * max(0, self.width - len(message))
            self.stream.write(f"\r{message}{padding}")
            self.width = len(message)
        elif milestone:
            self.stream.write(message + "\n")
        self.stream.flush()

    def done(self) -> None:
        if self.tty and self.width:
            self.stream.write("\r" + " " * self.width + "\r")
            self.stream.flush()
            self.width = 0


def load_in_chunks(
    base_url: str, total: int, concurrency: int, report: Callable[[int, int], None]
) -> LoadResult:
    """``run_load`` in a few slices, for a live count and a quick stop on Ctrl-C."""
    merged = LoadResult(requests=total)
    # Small slices: Ctrl-C waits for the current one to finish before cleaning up.
    chunk = min(max(concurrency * 4, total // 10), 250)
    started = time.monotonic()
    sent = 0
    while sent < total:
        size = min(chunk, total - sent)
        left = RUN_DEADLINE - (time.monotonic() - started)
        if left <= 0:
            merged.failures["not sent: deadline"] += total - sent
            break
        part = run_load(base_url, LOAD_PATH, total=size, concurrency=concurrency, deadline=left)
        merged.ok.extend(part.ok)
        merged.failures.update(part.failures)
        sent += size
        report(sent, merged.failed)
    merged.seconds = time.monotonic() - started
    return merged


def run_mode(
    mode: Mode,
    step: str,
    url: str,
    args: argparse.Namespace,
    log_dir: Path,
    progress: Progress,
    servers: list[UwsgiServer],
) -> RunResult:
    """Serve the app one way, load it, measure, stop it."""
    progress.show(f"{step} {mode.title}: starting uWSGI with {PROCESSES} workers")
    port = _free_port()
    server = start_uwsgi(
        # The socket goes before --ini: the ini binds its default port only if none is set.
        ["--http-socket", f"127.0.0.1:{port}", "--ini", str(INI), "--processes", str(PROCESSES)]
        + list(mode.options),
        env={"DATABASE_URL": url, **mode.env},
        cwd=ROOT,
        processes=PROCESSES,
        log_dir=log_dir,
    )
    servers.append(server)
    try:
        progress.show(
            f"{step} {mode.title}: uWSGI master pid {server.process.pid} ready in "
            f"{server.ready_seconds:.2f}s",
            milestone=True,
        )

        def report(sent: int, failed: int) -> None:
            progress.show(f"{step} {mode.title}: {sent}/{args.requests} requests, {failed} failed")

        kept = master_connections(url, server.process.pid)
        load = load_in_chunks(server.base_url, args.requests, args.concurrency, report)
        result = summarize(load, server.pss_kib(), server.ready_seconds, kept)
        progress.show(
            f"{step} {mode.title}: {result.failed} of {result.requests} failed", milestone=True
        )
        return result
    finally:
        server.stop()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _short_error(message: str, width: int) -> str:
    # "(psycopg2.OperationalError) SSL error: ..." -> "SSL error: ..."; JSON keeps it whole.
    text = re.sub(r"^\([\w.]+\)\s*", "", message)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_table(results: dict[str, RunResult]) -> str:
    """The side-by-side table: one column per mode, one row per measure."""
    columns = [m for m in MODES if m.key in results]
    errors: Counter[str] = Counter()
    for r in results.values():
        errors.update(r.failures)
    rows: list[tuple[str, list[str]]] = [
        ("requests", [str(results[m.key].requests) for m in columns]),
        ("failed requests", [str(results[m.key].failed) for m in columns]),
    ]
    label_width = 48
    for message, _ in errors.most_common():
        rows.append(
            (
                "  " + _short_error(message, label_width - 2),
                [str(results[m.key].failures.get(message, 0)) for m in columns],
            )
        )
    rows += [
        ("workers that answered", [str(results[m.key].workers) for m in columns]),
        ("distinct DB backends", [str(results[m.key].backends) for m in columns]),
        (
            "workers on the master's backend",
            [str(results[m.key].workers_on_master_backend) for m in columns],
        ),
        ("every answer over SSL", ["yes" if results[m.key].all_ssl else "NO" for m in columns]),
        (
            "connections the master keeps on the server",
            [_count(results[m.key].master_connections) for m in columns],
        ),
        ("memory: PSS of master+workers (MiB)", [f"{results[m.key].pss_mib:.1f}" for m in columns]),
        ("ready after (s)", [f"{results[m.key].ready_seconds:.2f}" for m in columns]),
        ("load took (s)", [f"{results[m.key].load_seconds:.2f}" for m in columns]),
    ]
    width = max(len(label) for label, _ in rows)
    cells = [max(10, len(m.title) + 1) for m in columns]  # the whole table fits 80 columns

    def line(label: str, values: list[str]) -> str:
        return label.ljust(width) + "".join(v.rjust(c) for v, c in zip(values, cells, strict=True))

    lines = [line("", [m.title for m in columns]), "-" * (width + sum(cells))]
    lines += [line(label, values) for label, values in rows]
    return "\n".join(lines)


def _count(value: int | None) -> str:
    return "?" if value is None else str(value)


def verdict(results: dict[str, RunResult]) -> list[str]:
    """A line per column saying what the numbers mean."""
    lines = []
    bug = results.get("without_fix")
    if bug is not None:
        if bug.failed or bug.workers_on_master_backend:
            lines.append(
                f"without fix: {bug.failed} request(s) failed and "
                f"{bug.workers_on_master_backend} worker(s) ran on the master's connection."
            )
        else:
            lines.append("without fix: the race did not show this time; run the demo again.")
    fixed = results.get("with_fix")
    if fixed is not None:
        state = "OK" if fixed_run_ok(fixed) else "FAILED"
        lines.append(
            f"with fix: {fixed.failed} failed, {fixed.workers_on_master_backend} worker(s) on "
            f"the master's connection -> {state}"
        )
        if fixed.master_connections is not None:
            lines.append(
                f"with fix: the master keeps {fixed.master_connections} connection(s) on the "
                "server (py-call-uwsgi-fork-hooks)."
            )
    lazy = results.get("lazy_apps")
    if fixed is not None and lazy is not None and fixed.pss_mib:
        extra = lazy.pss_mib - fixed.pss_mib
        lines.append(
            f"lazy-apps: {lazy.failed} failed, at {extra:+.1f} MiB PSS "
            f"({lazy.pss_mib / fixed.pss_mib:.2f}x) for the same {PROCESSES} workers."
        )
    return lines


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m example_app.demo",
        description="example_app under uWSGI: without the fix, with it, with lazy-apps.",
    )
    parser.add_argument("--requests", type=int, default=2000, help="per run (default 2000)")
    parser.add_argument("--concurrency", type=int, default=16, help="(default 16)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument(
        "--keep-logs", action="store_true", help="keep the uWSGI logs and print where they are"
    )
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress(sys.stderr)
    # SIGTERM becomes KeyboardInterrupt, so both take the same cleanup path.
    previous = {
        s: signal.signal(s, signal.default_int_handler) for s in (signal.SIGINT, signal.SIGTERM)
    }
    cleanup = contextlib.ExitStack()
    try:
        return _demo(args, progress, cleanup)
    except KeyboardInterrupt:
        progress.done()
        print("demo: interrupted; cleaning up", file=sys.stderr)
        return 130
    except Exception as exc:  # a clear message instead of a traceback; logs say the rest
        progress.done()
        print(f"demo: failed: {exc}", file=sys.stderr)
        return 1
    finally:
        # A second Ctrl-C must not cut the cleanup short.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        cleanup.close()
        for s, handler in previous.items():
            signal.signal(s, handler)


def _demo(args: argparse.Namespace, progress: Progress, cleanup: contextlib.ExitStack) -> int:
    if os.environ.get("DATABASE_URL"):
        url = database_url(os.environ["DATABASE_URL"])
        progress.show("database: $DATABASE_URL", milestone=True)
    else:
        progress.show("starting a throwaway PostgreSQL with SSL on")
        pg = start_postgres()
        cleanup.callback(stop_postgres, pg)
        url = pg.url()
        progress.show(f"throwaway PostgreSQL in {pg.root}", milestone=True)
    masked = make_url(url).render_as_string(hide_password=True)

    log_dir = Path(tempfile.mkdtemp(prefix="dbfix-demo-"))
    if args.keep_logs:
        cleanup.callback(print, f"demo: uWSGI logs kept in {log_dir}", file=sys.stderr)
    else:
        cleanup.callback(shutil.rmtree, log_dir, True)
    servers: list[UwsgiServer] = []
    cleanup.callback(lambda: [s.stop() for s in servers])

    results: dict[str, RunResult] = {}
    for number, mode in enumerate(MODES, start=1):
        step = f"[{number}/{len(MODES)}]"
        results[mode.key] = run_mode(mode, step, url, args, log_dir, progress, servers)
    progress.done()

    ok = fixed_run_ok(results["with_fix"])
    if args.json:
        report = {
            "database": masked,
            "processes": PROCESSES,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "runs": {key: asdict(r) for key, r in results.items()},
            "fixed_ok": ok,
        }
        print(json.dumps(report, indent=2))
    else:
        print(
            f"example_app under uWSGI ({INI.name}), {PROCESSES} workers, "
            f"{args.requests} requests at concurrency {args.concurrency} per run"
        )
        print(f"database: {masked}\n")
        print(format_table(results))
        print()
        print("\n".join(verdict(results)))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
