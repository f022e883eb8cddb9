"""The bug and the fix, on real uWSGI workers against a real PostgreSQL with SSL on."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy

from flask_uwsgi_dbfix.check.findings.ini import osafterfork_kills_workers
from harness.load import LoadResult, run_load
from harness.postgres import PostgresServer, default_driver
from harness.uwsgi import UwsgiServer
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture

from .conftest import StartUwsgi

BUG_APP = Path(__file__).parent / "apps" / "bug_app.py"
WARNING_NAME = "PreForkConnectionWarning"


def marked_line(mark: str) -> int:
    """Line number of the ``# MARK: <mark>`` comment in the test app."""
    for number, line in enumerate(BUG_APP.read_text().splitlines(), start=1):
        if f"# MARK: {mark}" in line:
            return number
    raise AssertionError(f"no MARK {mark!r} in {BUG_APP}")


def first_queries(server: UwsgiServer, workers: int) -> dict[int, dict[str, Any]]:
    """Each worker's first query per engine, until ``workers`` distinct workers answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(10):  # bounded: 10 rounds of 40 requests
        result = run_load(server.base_url, "/first", total=40, concurrency=8, deadline=30)
        for body in result.ok:
            seen[body["pid"]] = body
        if len(seen) >= workers:
            break
    return seen


def backends_by_worker(result: LoadResult, engine: str) -> dict[int, set[int]]:
    by_pid: dict[int, set[int]] = defaultdict(set)
    for body in result.ok:
        by_pid[body["pid"]].add(body["now"][engine]["backend"])
    return by_pid


def assert_isolated(result: LoadResult, engines: list[str]) -> None:
    """Zero failures; per engine, every worker process has backends of its own, all SSL,
    none of them the master's import-time backend."""
    assert result.failed == 0, result.failures
    assert len(result.ok) == result.requests
    for engine in engines:
        by_pid = backends_by_worker(result, engine)
        owners: dict[int, int] = {}
        for pid, backends in by_pid.items():
            for backend in backends:
                assert owners.setdefault(backend, pid) == pid, (
                    f"{engine}: backend {backend} used by workers {owners[backend]} and {pid}"
                )
        imported = {body["import"][engine] for body in result.ok}
        assert len(imported) == 1  # one master, one import-time connection per engine
        assert imported.isdisjoint(owners), f"{engine}: a worker used the master's connection"
        assert all(body["now"][engine]["ssl"] is True for body in result.ok)


def test_without_fix_every_worker_starts_on_the_masters_connection(serve: StartUwsgi) -> None:
    server = serve(fix=False)
    firsts = first_queries(server, workers=4)
    assert len(firsts) >= 2, "load did not reach two workers"
    for pid, body in firsts.items():
        first = body["first"]["default"]
        # Either it ran on the master's backend, or the shared TLS stream broke under it.
        assert first.get("backend") == body["import"]["default"] or "error" in first, (pid, first)
    shared = [b for b in firsts.values() if b["first"]["default"].get("backend")]
    errors = [b for b in firsts.values() if "error" in b["first"]["default"]]
    assert len(shared) + len(errors) == len(firsts)
    print(
        f"\nwithout fix: {len(firsts)} workers, {len(shared)} on the master's backend, "
        f"errors: {[b['first']['default']['error'] for b in errors]}"
    )


def test_without_fix_load_fails(serve: StartUwsgi) -> None:
    server = serve(fix=False)
    result = run_load(server.base_url, "/query", total=400, concurrency=16, deadline=90)
    print(f"\nwithout fix: {result.failed} of {result.requests} failed: {dict(result.failures)}")
    # The failures are few and early (FACTS.md), but with 4 workers on one TLS stream
    # at least one request must fail or see the master's backend.
    on_master = [b for b in result.ok if b["now"]["default"]["backend"] == b["import"]["default"]]
    assert result.failed > 0 or len({b["pid"] for b in on_master}) >= 2


def test_with_fix_2000_requests_each_worker_its_own_ssl_backend(
    serve: StartUwsgi, pg: PostgresServer
) -> None:
    server = serve(fix=True)
    result = run_load(server.base_url, "/query", total=2000, concurrency=16, deadline=240)
    print(f"\nwith fix: {result.failed} of {result.requests} failed in {result.seconds:.1f}s")
    assert_isolated(result, ["default"])
    assert len({body["pid"] for body in result.ok}) == 4
    assert all(pg.backend_ssl().values())
    log = server.log()
    # One warning per startup, not one per worker; names the line; never the password.
    assert log.count(WARNING_NAME) == 1, log
    assert f"{BUG_APP.name}:{marked_line('default-engine pre-fork connection')}" in log
    assert pg.password not in log
    assert "***@" in log


def test_with_fix_respawned_workers_also_get_their_own_backend(serve: StartUwsgi) -> None:
    # uWSGI ignores max-requests for workers younger than min-worker-lifetime (10 s).
    server = serve(fix=True, options=("--max-requests", "100", "--min-worker-lifetime", "0"))
    result = run_load(server.base_url, "/query", total=2000, concurrency=16, deadline=240)
    workers = {body["pid"] for body in result.ok}
    print(
        f"\nwith fix, --max-requests 100: {result.failed} of {result.requests} failed, "
        f"{len(workers)} worker processes"
    )
    assert len(workers) > 4, "no worker was respawned during the run"
    assert_isolated(result, ["default"])
    assert server.log().count(WARNING_NAME) == 1


def test_with_fix_two_binds_and_a_registered_engine(
    serve: StartUwsgi, fresh_db: Any, pg: PostgresServer
) -> None:
    env = {"SECOND_DATABASE_URL": fresh_db(), "PLAIN_DATABASE_URL": fresh_db()}
    server = serve(fix=True, env=env)
    result = run_load(server.base_url, "/query", total=2000, concurrency=16, deadline=240)
    assert_isolated(result, ["default", "second", "plain"])
    log = server.log()
    assert log.count(WARNING_NAME) == 1
    for name in ("default", "second", "plain"):
        masked = rf"{re.escape(default_driver())}://{pg.user}:\*\*\*@"
        assert re.search(rf"engine '{name}' \({masked}", log), log
    assert f"{BUG_APP.name}:{marked_line('probe connects')}" in log
    assert pg.password not in log


def test_with_fix_a_clean_app_gets_no_warning(serve: StartUwsgi) -> None:
    server = serve(fix=True, env={"IMPORT_QUERY": "0"})
    result = run_load(server.base_url, "/first", total=200, concurrency=16, deadline=60)
    assert result.failed == 0, result.failures
    assert WARNING_NAME not in server.log()


@pytest.mark.skipif(
    osafterfork_kills_workers(),
    reason="uWSGI 2.0.30's --py-call-osafterfork kills every worker on Python 3.13 "
    "('Fatal Python error: _PyRecursiveMutex_Unlock'), even a hello-world app; "
    "flask dbfix check reports it as an error (FACTS.md)",
)
def test_with_fix_and_py_call_osafterfork_one_warning_no_failures(serve: StartUwsgi) -> None:
    """Both hooks run in each worker (Python's at-fork one first); the warning survives."""
    server = serve(fix=True, options=("--py-call-osafterfork",))
    result = run_load(server.base_url, "/query", total=400, concurrency=16, deadline=90)
    assert_isolated(result, ["default"])
    assert server.log().count(WARNING_NAME) == 1


def test_with_fix_without_master_the_raw_post_fork_hook_is_used(serve: StartUwsgi) -> None:
    """uwsgidecorators refuses to import without --master; the fix must still apply."""
    server = serve(fix=True, master=False)
    result = run_load(server.base_url, "/query", total=400, concurrency=16, deadline=90)
    assert_isolated(result, ["default"])
    assert server.log().count(WARNING_NAME) == 1


def test_with_fix_and_lazy_apps_nothing_is_inherited_so_no_warning(serve: StartUwsgi) -> None:
    server = serve(fix=True, options=("--lazy-apps",))
    result = run_load(server.base_url, "/query", total=400, concurrency=16, deadline=90)
    assert result.failed == 0, result.failures
    assert WARNING_NAME not in server.log()


def test_an_apps_own_raw_post_fork_hook_still_runs_in_every_worker(serve: StartUwsgi) -> None:
    """Importing uwsgidecorators replaces uwsgi.post_fork_hook; the extension chains the
    app's own hook back in instead of silently dropping it."""
    server = serve(fix=True, env={"RAW_POSTFORK_HOOK": "1"})
    result = run_load(server.base_url, "/query", total=200, concurrency=16, deadline=60)
    assert_isolated(result, ["default"])
    assert server.log().count("app's own post_fork_hook ran") == 4


def test_with_fix_a_workers_first_query_through_the_session_works(serve: StartUwsgi) -> None:
    """The recreated pool's first connection is made inside ``Session`` (autobegin): engine
    discovery running there must not end the app context, whose teardown closes that very
    Session (SQLAlchemy 1.4: ``'NoneType' object has no attribute 'twophase'``)."""
    server = serve(fix=True)
    result = run_load(server.base_url, "/session", total=400, concurrency=16, deadline=90)
    assert result.failed == 0, result.failures
    assert len(result.ok) == result.requests
    for body in result.ok:
        assert body["session"]["backend"] != body["import"]["default"]
        assert body["session"]["ssl"] is True


@pytest.mark.skipif(
    sqlalchemy.__version__.startswith("1."),
    reason="SQLAlchemy 1.4 has no psycopg 3 dialect (postgresql+psycopg is new in 2.0)",
)
def test_psycopg3_has_the_same_bug_and_the_same_cure(serve: StartUwsgi, pg: PostgresServer) -> None:
    url = {"DATABASE_URL": pg.url(driver="postgresql+psycopg")}
    broken = serve(fix=False, env=url)
    firsts = first_queries(broken, workers=4)
    assert len(firsts) >= 2, "load did not reach two workers"
    for body in firsts.values():
        first = body["first"]["default"]
        assert first.get("backend") == body["import"]["default"] or "error" in first, first
    broken.stop()

    fixed = serve(fix=True, env=url)
    result = run_load(fixed.base_url, "/query", total=1000, concurrency=16, deadline=120)
    assert_isolated(result, ["default"])
    assert "postgresql+psycopg://" in fixed.log()
