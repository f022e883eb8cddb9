"""PostgreSQL restarted under load (a deploy, a failover): every pooled connection dies.

This module restarts a PostgreSQL of its own (started here, about a second), so that the
session's server, which other tests' pools hold connections to, is never restarted.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from harness.load import run_load
from harness.postgres import PostgresServer, postgres_server, restart_postgres

from .conftest import FIX, StartWeb
from .evidence import gather
from .helpers import in_background, results

WORKERS = 2
SERVER_SAW_CORRUPTION = "bad record mac"


@pytest.fixture(scope="module")
def own_pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


@FIX
@pytest.mark.parametrize("pre_ping", [False, True], ids=["no-pre-ping", "pre-ping"])
def test_postgres_restart(web: StartWeb, own_pg: PostgresServer, fix: bool, pre_ping: bool) -> None:
    env = {"DATABASE_URL": own_pg.url(), "PRE_PING": "1" if pre_ping else "0"}
    server = web(fix=fix, processes=WORKERS, env=env)
    log_start = own_pg.log_path.stat().st_size
    warm = run_load(server.base_url, "/query", total=60, concurrency=4, deadline=60)
    server_log = own_pg.log_path.read_bytes()[log_start:].decode(errors="replace")

    # 1. Restarted while the workers are idle: every worker's pooled connection is dead.
    restart_postgres(own_pg, mode="fast")
    first_after = run_load(server.base_url, "/query", total=100, concurrency=4, deadline=60)
    # 2. Restarted mid-load: requests during the outage fail (as HTTP 500s, none hangs).
    during = in_background(  # at least 1.5 s of load (300 x 20 ms / 4): the restart is inside
        lambda: run_load(
            server.base_url, "/query?sleep=0.02", total=300, concurrency=4, deadline=60
        )
    )
    time.sleep(0.3)
    restart_postgres(own_pg, mode="fast")
    outage = during()
    later = run_load(server.base_url, "/query", total=100, concurrency=4, deadline=60)

    before = gather(results(warm), next((r["import"] for r in warm.ok), None))
    print(f"\npostgres restart, fix={fix}, pre_ping={pre_ping}: before {warm.failed}/60 "
          f"({before.summary()}; server log: {server_log.count(SERVER_SAW_CORRUPTION)} "
          f"'{SERVER_SAW_CORRUPTION}'); idle restart: first 100 after "
          f"{first_after.failed} {dict(first_after.failures)}; restart mid-load: "
          f"{outage.failed}/300 during, {later.failed}/100 after")  # fmt: skip
    for load in (warm, first_after, outage, later):
        assert load.transport_failures == 0, load.failures
    # No worker stays stuck: once the server is back, everything works.
    assert later.failed == 0, later.failures
    if not fix:
        # The bug shows before the restarts; with pre-ping the app may not even see it, but
        # the server does (the ping itself went over the shared TLS stream). The restart
        # cannot show it: it kills the master's connection too, so the connections made
        # afterwards are every worker's own.
        assert before.bug_shown or SERVER_SAW_CORRUPTION in server_log, before.summary()
        return
    assert warm.failed == 0, warm.failures
    assert SERVER_SAW_CORRUPTION not in server_log
    if pre_ping:
        # The pool pings each connection before handing it out and reconnects: no request
        # after the restart fails.
        assert first_after.failed == 0, first_after.failures
    else:
        # Without pre-ping, the first request to get a dead pooled connection fails; SQLAlchemy
        # then invalidates that worker's whole pool: one failed request per worker at most.
        assert 0 < first_after.failed <= WORKERS, first_after.failures
        # psycopg2 finds the socket closed; psycopg 3 reads the server's shutdown notice.
        lost = ("closed unexpectedly", "terminating connection due to administrator command")
        assert all(any(w in e for w in lost) for e in first_after.failures), first_after.failures
