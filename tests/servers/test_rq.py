"""RQ: the worker forks a work-horse per job. Inherited connections exist only when the
worker process itself loaded the app (a worker class, or a module it imports)."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from redis import Redis
from rq import Queue
from rq.job import Job

from harness.postgres import PostgresServer
from harness.redis import RedisServer
from harness.rq import run_rq_burst

from .conftest import FIX, KEEP_MASTER_CONNECTIONS, ROOT, WARNING_NAME, app_env
from .evidence import driver_error, gather

JOBS = 60
APP_WORKER = "tests.servers.apps.rq_worker.AppWorker"
_queues = itertools.count(1)


@dataclass
class RqRun:
    results: list[dict[str, Any]]
    errors: list[str]
    exit_status: int
    log: str


RunRq = Callable[..., RqRun]


@pytest.fixture(scope="module")
def rq_run(
    pg: PostgresServer, redis: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> RunRq:
    """Enqueue jobs, run ``rq worker --burst`` until the queue is empty; shared per setup."""
    runs: dict[tuple[bool, str | None, int, bool], RqRun] = {}

    def run(*, fix: bool, worker_class: str | None, jobs: int = JOBS, keep: bool = False) -> RqRun:
        """``keep``: the worker keeps its idle connections when it forks (switch off)."""
        key = (fix, worker_class, jobs, keep)
        if key not in runs:
            name = f"rq{next(_queues)}"
            with Redis.from_url(redis.url()) as conn:
                queue = Queue(name, connection=conn)
                ids = [queue.enqueue("tests.servers.apps.rq_jobs.probe").id for _ in range(jobs)]
                log_path = tmp_path_factory.mktemp("rq") / "rq.log"
                status = run_rq_burst(
                    redis.url(),
                    name,
                    log_path=log_path,
                    worker_class=worker_class,
                    env=app_env(pg, fix, **(KEEP_MASTER_CONNECTIONS if keep else {})),
                    cwd=ROOT,
                )
                results, errors = job_results(ids, conn)
            runs[key] = RqRun(results, errors, status, log_path.read_text(errors="replace"))
        return runs[key]

    return run


def job_results(ids: list[str], conn: Redis) -> tuple[list[dict[str, Any]], list[str]]:
    """(what the finished jobs returned, why each other one did not finish)."""
    results, errors = [], []
    for job in Job.fetch_many(ids, connection=conn):
        if job is not None and job.is_finished:
            results.append(job.return_value())
        else:
            result = job.latest_result() if job is not None else None
            text = (result.exc_string or "") if result is not None else ""
            errors.append(driver_error(text) if text else "job not run")
    return results, errors


@FIX
def test_rq_worker_that_loads_the_app_gives_each_work_horse_its_own_backend(
    rq_run: RunRq, fix: bool
) -> None:
    run = rq_run(fix=fix, worker_class=APP_WORKER)
    master = run.results[0]["import"] if run.results else None
    found = gather(run.results + [{"error": e} for e in run.errors], master)
    print(f"\nrq worker class fix={fix}: {len(run.errors)} of {JOBS} jobs failed; "
          f"{found.summary()}")  # fmt: skip
    assert run.exit_status == 0, run.log[-3000:]
    if not fix:
        assert found.bug_shown, found.summary()
        return
    assert not run.errors, run.errors[:5]
    assert found.isolated, found.summary()
    assert len(found.pids) == JOBS  # one work-horse per job


def test_plain_rq_worker_inherits_nothing_even_without_the_fix(rq_run: RunRq) -> None:
    """Why the fix-off run cannot fail here: each work-horse imports the app itself."""
    run = rq_run(fix=False, worker_class=None, jobs=3)  # each work-horse imports the app: slow
    found = gather(run.results, None)
    assert not run.errors, run.errors[:5]
    assert found.isolated, found.summary()
    # Every work-horse made its own import-time connection: none was inherited.
    assert len({r["import"] for r in run.results}) == 3


@pytest.mark.parametrize("keep", [False, True], ids=["worker-closes", "worker-keeps"])
def test_rq_worker_warns_once_per_startup_about_what_work_horses_inherit(
    rq_run: RunRq, keep: bool
) -> None:
    """A work-horse is forked per job: the worker closes its idle connections before each
    fork (no warning), or, with the switch off, warns once for all of them."""
    run = rq_run(fix=True, worker_class=APP_WORKER, keep=keep)
    assert run.errors == []
    assert run.log.count(WARNING_NAME) == (1 if keep else 0), run.log[-3000:]
