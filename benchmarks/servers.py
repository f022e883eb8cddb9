"""One uWSGI instance per measurement: memory, start-up, throughput, server connections."""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.load import get_json, run_load
from harness.uwsgi import UwsgiServer, app_args, start_uwsgi

ROOT = Path(__file__).resolve().parent.parent
BENCH_APP = "benchmarks.app:app"
# uWSGI's default request log line starts with the worker's pid: "[pid: 123|app: 0|req: 1/1]".
_REQUEST_LOG = re.compile(rb"^\[pid: (\d+)\|app: -?\d+\|req: ", re.M)


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    env: dict[str, str]
    options: tuple[str, ...] = ()
    unavailable: str = ""
    """Why this mode cannot run with this version of the package ("" = it can)."""
    connections_only: bool = False
    """Measured for the connections row: once per worker count, not in every repeat."""


def bench_modes(close_before_fork_known: bool) -> list[Mode]:
    hooks = ("--py-call-uwsgi-fork-hooks",)
    missing = (
        ""
        if close_before_fork_known
        else "not available: this flask_uwsgi_dbfix has no DBFIX_CLOSE_BEFORE_FORK"
    )
    return [
        Mode("bare", "bare prefork", {"BENCH_IMPORT_QUERY": "0", "BENCH_FIX": "0"}),
        Mode("fix", "prefork + fix", {"BENCH_IMPORT_QUERY": "1", "BENCH_FIX": "1"}),
        Mode("lazy", "lazy-apps", {"BENCH_IMPORT_QUERY": "1", "BENCH_FIX": "0"}, ("--lazy-apps",)),
        # The control: bare prefork's app with the fix on, so fix on vs off with the very
        # same database work (none before the fork) isolates what the fix itself costs.
        Mode(
            "fix_clean",
            "prefork + fix, no DB work at import",
            {"BENCH_IMPORT_QUERY": "0", "BENCH_FIX": "1"},
        ),
        Mode(
            "fix_keep",
            "prefork + fix, master keeps its connection",
            {"BENCH_IMPORT_QUERY": "1", "BENCH_FIX": "1", "BENCH_CLOSE_BEFORE_FORK": "0"},
            hooks,
            connections_only=True,
        ),
        Mode(
            "fix_close",
            "prefork + fix, master closes before fork",
            {"BENCH_IMPORT_QUERY": "1", "BENCH_FIX": "1", "BENCH_CLOSE_BEFORE_FORK": "1"},
            hooks,
            unavailable=missing,
            connections_only=True,
        ),
    ]


def user_modes() -> list[Mode]:
    """For ``--app``: the user's app as it is, preforked and with lazy-apps."""
    return [
        Mode("prefork", "prefork (your app as is)", {}),
        Mode("lazy", "lazy-apps", {}, ("--lazy-apps",)),
    ]


@dataclass
class Load:
    path: str
    ready_path: str
    warmup: int
    requests: int
    concurrency: int


@dataclass
class RunResult:
    mode: str
    workers: int
    repeat: int
    ready_s: float | None = None
    """Process start until every worker has answered a request."""
    ready_cpu_s: float | None = None
    """CPU time (user + system) master and workers had used by then: much less sensitive
    than wall time to other jobs on a shared machine."""
    pss_mib: float | None = None
    worker_private_mib: float | None = None
    """Mean private dirty memory of a worker once every worker has answered one probe:
    the pages a worker no longer shares with the master (the fix's own per-worker cost)."""
    rps: float | None = None
    cpu_ms_per_req: float | None = None
    """uWSGI's CPU time (master + workers) per timed request; PostgreSQL's not included."""
    requests: int = 0
    failed: int = 0
    failures: dict[str, int] = field(default_factory=dict)
    conns_startup: int | None = None
    conns_loaded: int | None = None
    error: str = ""
    log_dir: str = ""
    """Kept only when something failed."""


_TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(server: UwsgiServer) -> float:
    """utime + stime of the master and its live workers."""
    total = 0
    for pid in [server.process.pid, *server.worker_pids()]:
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15)
    return total / _TICK


def worker_private_mib(server: UwsgiServer) -> float | None:
    values = []
    for pid in server.worker_pids():
        with contextlib.suppress(OSError, ValueError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Private_Dirty:"):
                    values.append(int(line.split()[1]) / 1024)
                    break
    return sum(values) / len(values) if values else None


def _answered(server: UwsgiServer) -> set[int]:
    return {int(p) for p in _REQUEST_LOG.findall(server.log_path.read_bytes())}


def _wait_all_answered(server: UwsgiServer, workers: int, path: str, deadline: float) -> bool:
    """Parallel probes until every worker pid shows up in the request log."""
    pids = set(server.worker_pids())
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if pids <= _answered(server):
            return True
        run_load(server.base_url, path, total=2 * workers, concurrency=2 * workers, deadline=10)
    return pids <= _answered(server)


def run_one(
    mode: Mode,
    workers: int,
    repeat: int,
    *,
    app: str,
    database_url: str,
    scale: float,
    load: Load,
    count_connections: Callable[[], int | None],
    log_root: Path,
    build_path: str = "",
    build: dict[str, Any] | None = None,
    app_dir: Path | None = None,
) -> RunResult:
    """Start ``app`` with ``workers`` workers, measure, stop. Fills ``build`` (once) from
    ``build_path`` (the bench app's description of what its import built). ``app_dir``:
    the user's project, where uWSGI runs with it on the Python path (default: ROOT)."""
    build = {} if build is None else build
    result = RunResult(mode.name, workers, repeat)
    args = [
        *app_args(app, processes=workers, root=app_dir or ROOT),
        "--listen",
        "128",
        *mode.options,
    ]
    env = {"DATABASE_URL": database_url, "BENCH_SCALE": str(scale), **mode.env}
    log_dir = Path(tempfile.mkdtemp(prefix=f"{mode.name}-{workers}-", dir=log_root))
    started = time.monotonic()
    try:
        server = start_uwsgi(
            args,
            env=env,
            cwd=ROOT,
            processes=workers,
            ready_path=load.ready_path,
            timeout=180,
            log_dir=log_dir,
        )
    except RuntimeError as e:
        result.error = str(e).splitlines()[0]
        result.log_dir = str(log_dir)
        return result
    try:
        if _wait_all_answered(server, workers, load.ready_path, deadline=120):
            result.ready_s = time.monotonic() - started
            result.ready_cpu_s = cpu_seconds(server)
            result.worker_private_mib = worker_private_mib(server)
        if build_path and not build:
            with contextlib.suppress(Exception):
                build.update(get_json(server.base_url, build_path)[1])
        result.conns_startup = count_connections()
        warm = run_load(server.base_url, load.path, total=load.warmup, concurrency=load.concurrency)
        result.pss_mib = server.pss_kib() / 1024
        cpu_before = cpu_seconds(server)
        timed = run_load(
            server.base_url, load.path, total=load.requests, concurrency=load.concurrency
        )
        cpu_used = cpu_seconds(server) - cpu_before
        result.rps = (load.requests - timed.failed) / timed.seconds if timed.seconds else None
        result.cpu_ms_per_req = cpu_used / load.requests * 1000
        result.requests = warm.requests + timed.requests
        result.failed = warm.failed + timed.failed
        result.failures = dict(warm.failures + timed.failures)
        result.conns_loaded = count_connections()
    finally:
        server.stop()
        if result.failed or result.ready_s is None:
            result.log_dir = str(log_dir)
        else:
            with contextlib.suppress(OSError):
                for p in log_dir.iterdir():
                    p.unlink()
                log_dir.rmdir()
    return result


def as_dict(result: RunResult) -> dict[str, Any]:
    return dict(result.__dict__)
