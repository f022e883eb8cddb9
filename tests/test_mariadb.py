"""The same bug and the same cure on MariaDB (TLS required, PyMySQL): the pool is the same,
only the wire protocol differs.

Real uWSGI workers and ``os.fork`` children against Debian's MariaDB. A connection's id
(``CONNECTION_ID()``) plays the part of PostgreSQL's backend pid.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from flask_uwsgi_dbfix import FlaskDBFix, register
from flask_uwsgi_dbfix.check import build_report
from flask_uwsgi_dbfix.check.output import render_human, report_to_json
from harness.load import run_load
from harness.mariadb import MariaDBServer
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture
from tests.test_fork_inprocess import in_child
from tests.test_uwsgi_fork import assert_isolated, first_queries

from .conftest import StartUwsgi

CONNECTION = text("SELECT CONNECTION_ID()")


def connection_id(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(CONNECTION).scalar_one())


@pytest.fixture
def engine(mariadb: MariaDBServer) -> Iterator[Engine]:
    eng = create_engine(mariadb.url(), pool_size=1, max_overflow=0, pool_timeout=5)
    yield eng
    eng.dispose()


def test_without_fix_workers_start_on_the_masters_mariadb_connection(
    serve: StartUwsgi, mariadb: MariaDBServer
) -> None:
    server = serve(fix=False, env={"DATABASE_URL": mariadb.url()})
    firsts = first_queries(server, workers=4)
    assert len(firsts) >= 2, "load did not reach two workers"
    for pid, body in firsts.items():
        first = body["first"]["default"]
        # Either it ran on the master's connection, or the shared TLS stream broke under it.
        assert first.get("backend") == body["import"]["default"] or "error" in first, (pid, first)
    errors = [
        b["first"]["default"]["error"] for b in firsts.values() if "error" in b["first"]["default"]
    ]
    print(f"\nwithout fix on MariaDB: {len(firsts)} workers, first-query errors: {errors}")


def test_without_fix_load_fails_on_mariadb(serve: StartUwsgi, mariadb: MariaDBServer) -> None:
    server = serve(fix=False, env={"DATABASE_URL": mariadb.url()})
    result = run_load(server.base_url, "/query", total=400, concurrency=16, deadline=90)
    print(f"\nwithout fix: {result.failed} of {result.requests} failed: {dict(result.failures)}")
    on_master = [b for b in result.ok if b["now"]["default"]["backend"] == b["import"]["default"]]
    assert result.failed > 0 or len({b["pid"] for b in on_master}) >= 2


def test_with_fix_each_worker_its_own_tls_connection_on_mariadb(
    serve: StartUwsgi, mariadb: MariaDBServer
) -> None:
    server = serve(fix=True, env={"DATABASE_URL": mariadb.url()})
    result = run_load(server.base_url, "/query", total=1000, concurrency=16, deadline=180)
    print(f"\nwith fix: {result.failed} of {result.requests} failed in {result.seconds:.1f}s")
    assert_isolated(result, ["default"])  # 0 failed, own connections, none the master's, TLS
    assert len({body["pid"] for body in result.ok}) == 4
    log = server.log()
    assert log.count("PreForkConnectionWarning") == 1, log
    assert "mysql+pymysql://app:***@127.0.0.1" in log
    assert mariadb.password not in log


def test_a_registered_engine_forked_child_gets_its_own_connection_parent_keeps_its(
    engine: Engine,
) -> None:
    register(engine, name="mariadb", close_before_fork=False)
    parent = connection_id(engine)  # idle in the pool: the child inherits it

    child = in_child(lambda: {"connection": connection_id(engine)})

    assert "error" not in child, child
    assert child["connection"] != parent
    assert connection_id(engine) == parent  # the same pooled connection, still healthy


def test_control_without_the_fix_a_forked_child_runs_on_the_parents_connection(
    engine: Engine,
) -> None:
    """Proves the test above can fail: an unregistered engine hands the child the parent's
    connection, and the parent's next query meets the broken TLS stream (or the child's
    answer) instead of its own."""
    parent = connection_id(engine)

    child = in_child(lambda: {"connection": connection_id(engine)})

    after: dict[str, Any]
    try:
        after = {"connection": connection_id(engine)}
    except Exception as exc:  # the bug: the parent's stream is broken
        after = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}"}
    print(f"\nwithout fix: child {child}, parent after {after}")
    assert child.get("connection") == parent or "error" in child
    assert "error" in after or child.get("connection") == parent


def test_the_check_names_a_mariadb_engine_with_its_password_masked(
    mariadb: MariaDBServer,
) -> None:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = mariadb.url()
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # a connection the master would hand on
        db.session.commit()
        report = build_report(app, default_ini="/nonexistent/uwsgi.ini")
        human = render_human(report)
        as_json = json.dumps(report_to_json(report))
        db.engine.dispose()
    codes = [finding.code for finding in report.findings]
    assert "prefork-connection" in codes, human
    for output in (human, as_json):
        assert "mysql+pymysql://app:***@127.0.0.1" in output
        assert mariadb.password not in output
