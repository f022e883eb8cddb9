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

from .conftest import FIX, KEEP_MASTER_CONNECTIONS, ROOT, WARNING_NAME, app_env
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
    pg: PostgresServer,
    redis: RedisServer,
    tmp_path: Path,
    fix: bool,
    *args: str,
    env: dict[str, str] | None = None,
) -> tuple[ServerProcess, str]:
    queue = f"q{next(_queues)}"
    worker = start_celery_worker(
        "tests.servers.apps.celery_app:celery_app",
        ["--pool", "prefork", "--concurrency", "4", "--queues", queue, *args],
        log_dir=tmp_path,
        env=app_env(pg, fix, REDIS_URL=redis.url(), **(env or {})),
        cwd=ROOT,
    )
    return worker, queue


@dataclass
class CeleryRun:
    results: list[dict[str, Any]]
    errors: list[str]
    log: str


RunCelery = Callable[..., CeleryRun]


@pytest.fixture(scope="module")
def celery_run(
    pg: PostgresServer, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> RunCelery:
    """One worker run per (fix, max-tasks-per-child), shared by the tests that read it."""
    runs: dict[tuple[bool, int | None, bool], CeleryRun] = {}

    def run(fix: bool, max_tasks: int | None, keep: bool = False) -> CeleryRun:
        """``keep``: the main process keeps its idle connections (switch off)."""
        if (fix, max_tasks, keep) not in runs:
            extra = ("--max-tasks-per-child", str(max_tasks)) if max_tasks else ()
            tmp = tmp_path_factory.mktemp("celery")
            env = KEEP_MASTER_CONNECTIONS if keep else None
            worker, queue = start_worker(pg, redis, tmp, fix, *extra, env=env)
            try:
                results, errors = run_tasks(redis, queue, TASKS)
            finally:
                worker.stop(graceful=False)
            runs[fix, max_tasks, keep] = CeleryRun(results, errors, worker.log())
        return runs[fix, max_tasks, keep]

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


@pytest.mark.parametrize("keep", [False, True], ids=["master-closes", "master-keeps"])
def test_celery_warns_once_per_startup_about_what_children_inherit(
    celery_run: RunCelery, keep: bool
) -> None:
    """Children are forked again and again (max-tasks-per-child): the main process closes
    its idle connections before each fork (no warning), or, with the switch off, warns
    once for all of them."""
    run = celery_run(True, 5, keep)
    assert run.errors == []
    assert run.log.count(WARNING_NAME) == (1 if keep else 0), run.log
