"""The process-wide mode under Celery prefork and RQ: the same apps as the other server tests,
without FlaskDBFix (``DBFIX_FIX=0``), started under ``dbfix-run``; the runs without it are
in test_celery.py and test_rq.py (``nofix``), where the bug shows."""

from __future__ import annotations

import sys
from pathlib import Path

from redis import Redis
from rq import Queue

from harness.celery import start_celery_worker
from harness.postgres import PostgresServer
from harness.redis import RedisServer
from harness.rq import run_rq_burst

from .conftest import ROOT, WARNING_NAME, app_env
from .evidence import gather
from .test_celery import TASKS, run_tasks
from .test_rq import APP_WORKER, JOBS, job_results

BIN = Path(sys.executable).parent


def test_celery_prefork_under_dbfix_run(
    pg: PostgresServer, redis: RedisServer, tmp_path: Path
) -> None:
    """``dbfix-run celery -A ... worker``: the main process closes what the app opened at
    import before it forks the pool, and every pool process (re-forked every 5 tasks) gets
    backends of its own."""
    worker = start_celery_worker(
        "tests.servers.apps.celery_app:celery_app",
        ["--pool", "prefork", "--concurrency", "4", "--queues", "pw",
         "--max-tasks-per-child", "5"],
        log_dir=tmp_path,
        env=app_env(pg, False, REDIS_URL=redis.url()),
        cwd=ROOT,
        program=[str(BIN / "dbfix-run"), str(BIN / "celery")],
    )  # fmt: skip
    try:
        results, errors = run_tasks(redis, "pw", TASKS)
    finally:
        worker.stop(graceful=False)
    found = gather(results + [{"error": e} for e in errors], results[0]["import"])
    assert not errors, errors[:5]
    assert found.isolated, found.summary()
    assert len(found.pids) >= 8  # pool processes forked again and again
    assert WARNING_NAME not in worker.log()  # closed before each fork: nothing inherited


def test_rq_worker_under_dbfix_run(pg: PostgresServer, redis: RedisServer, tmp_path: Path) -> None:
    """``dbfix-run rq worker`` with a worker class that loads the app: one work-horse per
    job, each on a backend of its own, none failed."""
    with Redis.from_url(redis.url()) as conn:
        queue = Queue("pw", connection=conn)
        ids = [queue.enqueue("tests.servers.apps.rq_jobs.probe").id for _ in range(JOBS)]
        status = run_rq_burst(
            redis.url(),
            "pw",
            log_path=tmp_path / "rq.log",
            worker_class=APP_WORKER,
            env=app_env(pg, False),
            cwd=ROOT,
            program=[str(BIN / "dbfix-run"), str(BIN / "rq")],
        )
        results, errors = job_results(ids, conn)
    log = (tmp_path / "rq.log").read_text(errors="replace")
    assert status == 0, log[-3000:]
    found = gather(results + [{"error": e} for e in errors], results[0]["import"])
    assert not errors, errors[:5]
    assert found.isolated, found.summary()
    assert len(found.pids) == JOBS
