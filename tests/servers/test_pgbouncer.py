"""The bug and the fix through a real PgBouncer (TLS on both sides) in front of PostgreSQL.

PgBouncer does not hide the bug: the workers share the master's TLS connection to PgBouncer,
whatever PgBouncer does behind it. And in transaction pooling psycopg 3's automatic prepared
statements break unless ``prepare_threshold=None`` (PgBouncer 1.18 does not track them).
"""

from __future__ import annotations

import json

import psycopg2
import pytest
import sqlalchemy

from harness.load import run_load
from harness.pgbouncer import PgBouncerServer, pgbouncer_server
from harness.postgres import PostgresServer, process_alive

from .conftest import StartWeb

PSYCOPG2 = "postgresql+psycopg2"
PSYCOPG = "postgresql+psycopg"
NO_PREPARE = json.dumps({"connect_args": {"prepare_threshold": None}})
needs_psycopg_dialect = pytest.mark.skipif(
    sqlalchemy.__version__.startswith("1."),
    reason="SQLAlchemy 1.4 has no psycopg 3 dialect (postgresql+psycopg is new in 2.0)",
)


def env_through(bouncer: PgBouncerServer, pool_mode: str, driver: str) -> dict[str, str]:
    env = {"DATABASE_URL": bouncer.url(pool_mode, driver=driver)}
    if driver == PSYCOPG and pool_mode == "transaction":
        # Read by Flask's from_prefixed_env as JSON: SQLALCHEMY_ENGINE_OPTIONS.
        env["WEB_SQLALCHEMY_ENGINE_OPTIONS"] = NO_PREPARE
    return env


def test_pgbouncer_refuses_clients_without_tls_and_stops_by_its_pid(pg: PostgresServer) -> None:
    with pgbouncer_server(pg) as bouncer:
        plain = {
            "host": "127.0.0.1", "port": bouncer.port, "user": bouncer.user,
            "password": bouncer.password, "dbname": bouncer.dbname("session"),
            "sslmode": "disable", "connect_timeout": 5,
        }  # fmt: skip
        with pytest.raises(psycopg2.OperationalError, match="SSL required"):
            psycopg2.connect(**plain).close()
        assert bouncer.show("CLIENTS")[0]["tls"].startswith("TLSv1.")  # the console's own
        pid = bouncer.server.pid
    assert not process_alive(pid)
    assert not bouncer.root.exists()
    assert bouncer.password not in bouncer.masked_url("session")


def test_without_fix_requests_fail_through_pgbouncer(
    web: StartWeb, pgbouncer: PgBouncerServer
) -> None:
    log_start = len(pgbouncer.log())
    server = web(fix=False, processes=4, env=env_through(pgbouncer, "transaction", PSYCOPG2))
    result = run_load(server.base_url, "/query", total=200, concurrency=16, deadline=60)
    print(f"\nwithout fix: {result.failed} of {result.requests} failed: {dict(result.failures)}")
    for line in pgbouncer.log()[log_start:].splitlines():
        if "WARNING" in line or ("closing because" in line and "client close" not in line):
            print(f"PgBouncer: {line}")
    # Every worker's first checkout is the master's pooled connection: one TLS stream to
    # PgBouncer written by 4 processes. The second writer's record fails PgBouncer's MAC
    # check, so at least one request fails (FACTS.md: the failures are few and early).
    assert result.failed > 0


@pytest.mark.parametrize("pool_mode", ["transaction", "session"])
@pytest.mark.parametrize(
    "driver",
    [PSYCOPG2, pytest.param(PSYCOPG, marks=needs_psycopg_dialect)],
    ids=["psycopg2", "psycopg"],
)
def test_with_fix_no_request_fails_and_the_master_stays_a_pgbouncer_client(
    web: StartWeb, pgbouncer: PgBouncerServer, pool_mode: str, driver: str
) -> None:
    server = web(fix=True, processes=4, env=env_through(pgbouncer, pool_mode, driver))
    result = run_load(server.base_url, "/query", total=200, concurrency=16, deadline=60)
    print(f"\nwith fix, {driver}, {pool_mode}: {result.failed} of {result.requests} failed")
    assert result.failed == 0, result.failures
    assert len(result.ok) == result.requests
    assert len({body["pid"] for body in result.ok}) == 4
    assert all(body["ssl"] is True for body in result.ok)  # PgBouncer -> PostgreSQL is TLS
    clients = [c for c in pgbouncer.show("CLIENTS") if c["database"] == pgbouncer.dbname(pool_mode)]
    # One per worker, plus the master's idle pooled connection: the master does not serve
    # requests, but PgBouncer counts it against max_client_conn (and, in session pooling,
    # it pins a server connection) for the master's whole life.
    assert len(clients) == 4 + 1, clients


@pytest.mark.parametrize("threshold", [5, None], ids=["default", "none"])
def test_psycopg3_prepared_statements_break_in_transaction_pooling_unless_threshold_none(
    pgbouncer: PgBouncerServer, threshold: int | None
) -> None:
    """The hazard the docs describe, made deterministic (no fork involved): psycopg 3
    prepares a query once it ran 5 times (``prepare_threshold=5``), on the server
    connection PgBouncer lent for that transaction; the next transaction may get another
    server connection, which never saw the statement. PgBouncer 1.18 does not track them."""
    psycopg = pytest.importorskip("psycopg")
    params = dict(
        host="127.0.0.1", port=pgbouncer.port, user=pgbouncer.user,
        password=pgbouncer.password, dbname=pgbouncer.dbname("transaction"),
        sslmode="verify-full", sslrootcert=str(pgbouncer.ca_cert), connect_timeout=5,
    )  # fmt: skip
    with (
        psycopg.connect(**params, autocommit=True, prepare_threshold=threshold) as app,
        psycopg.connect(**params) as other,
    ):
        for _ in range(6):  # prepared on the 6th, on the one server connection in use
            app.execute("SELECT pg_backend_pid()").fetchone()
        other.execute("SELECT 1").fetchone()  # an open transaction now holds that one
        if threshold is None:
            app.execute("SELECT pg_backend_pid()").fetchone()
            return
        with pytest.raises(psycopg.errors.InvalidSqlStatementName, match="prepared statement"):
            app.execute("SELECT pg_backend_pid()").fetchone()  # runs on a second one
