"""The README's first command, in reduced size: it must show the bug, the fix, and clean up."""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from example_app.demo import MODES, PROCESSES, RunResult, format_table, summarize
from harness.load import LoadResult
from harness.postgres import PostgresServer
from harness.uwsgi import group_pids

ROOT = Path(__file__).resolve().parent.parent
DEMO = [sys.executable, "-m", "example_app.demo"]


def demo_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DBFIX_ENABLED")}
    return {**env, **extra}


def test_demo_shows_the_bug_the_fix_and_what_lazy_apps_costs() -> None:
    done = subprocess.run(
        [*DEMO, "--requests", "300", "--concurrency", "16", "--json"],
        cwd=ROOT,
        env=demo_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    runs = {key: RunResult(**value) for key, value in report["runs"].items()}
    assert list(runs) == ["without_fix", "with_fix", "lazy_apps"]
    assert report["processes"] == PROCESSES == 4
    assert "***@" in report["database"]

    bug, fixed, lazy = runs["without_fix"], runs["with_fix"], runs["lazy_apps"]
    # Each worker's first query runs on the master's connection, or breaks on it.
    assert bug.failed > 0 or bug.workers_on_master_backend > 0, bug
    assert (fixed.failed, fixed.workers_on_master_backend, fixed.shared_backends) == (0, 0, 0)
    assert fixed.workers == fixed.backends == PROCESSES
    assert fixed.all_ssl
    assert (lazy.failed, lazy.workers_on_master_backend, lazy.shared_backends) == (0, 0, 0)
    for run in runs.values():
        assert run.requests == 300
        assert run.pss_mib > 0 and run.ready_seconds > 0

    # The throwaway server's directory is gone once the demo exits.
    pg_dir = re.search(r"throwaway PostgreSQL in (\S+)", done.stderr)
    assert pg_dir is not None, done.stderr
    assert not Path(pg_dir.group(1)).exists()


def test_demo_honours_database_url_and_cleans_up_on_ctrl_c(
    fresh_db: Callable[[], str], pg: PostgresServer
) -> None:
    process = subprocess.Popen(
        [*DEMO, "--requests", "100000", "--json"],
        cwd=ROOT,
        env=demo_env(DATABASE_URL=fresh_db()),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    assert process.stderr is not None
    stderr = process.stderr
    reader = threading.Thread(target=lambda: [lines.put(line) for line in stderr], daemon=True)
    reader.start()
    seen: list[str] = []
    master = None
    try:
        deadline = time.monotonic() + 60
        while master is None and time.monotonic() < deadline:
            try:
                seen.append(lines.get(timeout=1))
            except queue.Empty:
                continue
            found = re.search(r"uWSGI master pid (\d+) ready", seen[-1])
            master = int(found.group(1)) if found else None
        assert master is not None, seen
        time.sleep(0.5)  # let the load start
        interrupted = time.monotonic()
        process.send_signal(signal.SIGINT)
        process.wait(timeout=60)
        cleanup_seconds = time.monotonic() - interrupted
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(timeout=10)
    while not lines.empty():
        seen.append(lines.get())
    assert process.stdout is not None
    output = process.stdout.read() + "".join(seen)
    process.stdout.close()
    stderr.close()
    assert process.returncode == 130, output
    assert "database: $DATABASE_URL" in output
    assert "interrupted; cleaning up" in output
    assert group_pids(master) == []
    assert cleanup_seconds < 10
    assert pg.password not in output


def test_summarize_counts_only_another_process_on_the_startup_backend() -> None:
    master = {"pid": 1, "backend": 100}
    load = LoadResult(
        requests=5,
        ok=[
            {"pid": 10, "backend": 100, "ssl": True, "startup": master},  # master's connection
            {"pid": 11, "backend": 100, "ssl": True, "startup": master},  # shared with 10
            {"pid": 12, "backend": 102, "ssl": True, "startup": master},
            # lazy-apps: the worker made the startup connection itself, so it is its own
            {"pid": 13, "backend": 103, "ssl": False, "startup": {"pid": 13, "backend": 103}},
        ],
        failures=Counter({"(psycopg2.OperationalError) SSL SYSCALL error: EOF detected": 1}),
    )
    result = summarize(load, pss_kib=2048, ready_seconds=0.5)
    assert (result.workers, result.backends, result.shared_backends) == (4, 3, 1)
    assert result.workers_on_master_backend == 2
    assert (result.failed, result.all_ssl, result.pss_mib) == (1, False, 2.0)


def test_table_has_a_column_per_run_and_a_row_per_error_and_fits_80_columns() -> None:
    long_error = "(psycopg2.OperationalError) SSL error: decryption failed or bad record mac"
    base: dict[str, Any] = dict(
        requests=2000,
        failed=0,
        failures={},
        workers=4,
        backends=4,
        shared_backends=0,
        workers_on_master_backend=0,
        all_ssl=True,
        pss_mib=100.0,
        ready_seconds=0.5,
        load_seconds=2.0,
    )
    results = {m.key: RunResult(**base) for m in MODES}
    results["without_fix"] = RunResult(**{**base, "failed": 3, "failures": {long_error: 3}})
    table = format_table(results)
    lines = table.splitlines()
    assert lines[0].split() == ["without", "fix", "with", "fix", "lazy-apps"]
    assert max(len(line) for line in lines) <= 80
    error_row = next(line for line in lines if "decryption failed" in line)
    assert error_row.split()[-3:] == ["3", "0", "0"]
    assert "psycopg2.OperationalError" not in table  # the JSON output keeps the full text
