"""Celery prefork (Redis broker): a Flask app created in the Celery module with database work
at import; each pool process must query on a connection of its own."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from harness.celery import start_celery_worker
from harness.postgres import PostgresServer
from harness.process import ServerProcess
from harness.redis import RedisServer

from .conftest import FIX, NEEDS_ISSUE_7, ROOT, WARNING_NAME, app_env
from .evidence import driver_error, gather

TASKS = 100
_queues = itertools.count(1)


def run_tasks(
    redis: RedisServer, queue: str, total: int, deadline: float = 120
) -> tuple[list[dict[str, Any]], list[str]]:
    """Send ``total`` probe tasks to ``queue``; (results, task errors). A task not done by
    the deadline is an error too."""
    client = Celery("dbfix-test-client", broker=redis.url(), backend=redis.url())
    client.conf.broker_connection_retry_on_startup = True
    try:
        pending = [client.send_task("dbfix.probe", queue=queue) for _ in range(total)]
        results: list[dict[str, Any]] = []
        errors: list[str] = []
        end = time.monotonic() + deadline
        for r in pending:
            try:
                value = r.get(timeout=max(0.1, end - time.monotonic()), propagate=False)
            except Exception as exc:  # celery's TimeoutError: the task never finished
                errors.append(f"not done: {type(exc).__name__}")
                continue
            if r.state == "SUCCESS":
                results.append(value)
            else:
                errors.append(driver_error(f"{value!r}") if value is not None else r.state)
        return results, errors
    finally:
        client.close()


def start_worker(
    pg: PostgresServer, redis: RedisServer, tmp_path: Path, fix: bool, *args: str
) -> tuple[ServerProcess, str]:
    queue = f"q{next(_queues)}"
    worker = start_celery_worker(
        "tests.servers.apps.celery_app:celery_app",
        ["--pool", "prefork", "--concurrency", "4", "--queues", queue, *args],
        log_dir=tmp_path,
        env=app_env(pg, fix, REDIS_URL=redis.url()),
        cwd=ROOT,
    )
    return worker, queue


@dataclass
class CeleryRun:
    results: list[dict[str, Any]]
    errors: list[str]
    log: str


RunCelery = Callable[[bool, "int | None"], CeleryRun]


@pytest.fixture(scope="module")
def celery_run(
    pg: PostgresServer, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> RunCelery:
    """One worker run per (fix, max-tasks-per-child), shared by the tests that read it."""
    runs: dict[tuple[bool, int | None], CeleryRun] = {}

    def run(fix: bool, max_tasks: int | None) -> CeleryRun:
        if (fix, max_tasks) not in runs:
            extra = ("--max-tasks-per-child", str(max_tasks)) if max_tasks else ()
            tmp = tmp_path_factory.mktemp("celery")
            worker, queue = start_worker(pg, redis, tmp, fix, *extra)
            try:
                results, errors = run_tasks(redis, queue, TASKS)
            finally:
                worker.stop(graceful=False)
            runs[fix, max_tasks] = CeleryRun(results, errors, worker.log())
        return runs[fix, max_tasks]

    return run


@FIX
@pytest.mark.parametrize("max_tasks", [None, 5], ids=["long-lived", "max-tasks-per-child-5"])
def test_celery_prefork_children_each_get_their_own_backend(
    celery_run: RunCelery, fix: bool, max_tasks: int | None
) -> None:
    run = celery_run(fix, max_tasks)
    results, errors = run.results, run.errors
    master = results[0]["import"] if results else None
    found = gather(results + [{"error": e} for e in errors], master)
    print(f"\ncelery fix={fix} max_tasks={max_tasks}: {len(errors)} of {TASKS} tasks failed; "
          f"{found.summary()}")  # fmt: skip
    if not fix:
        assert found.bug_shown, found.summary()
        return
    assert not errors, errors
    assert found.isolated, found.summary()
    assert len(found.pids) >= (8 if max_tasks else 2)  # children forked again and again


@pytest.mark.xfail(strict=True, reason=NEEDS_ISSUE_7)
def test_celery_warns_once_per_startup(celery_run: RunCelery) -> None:
    log = celery_run(True, 5).log
    assert log.count(WARNING_NAME) == 1, log
