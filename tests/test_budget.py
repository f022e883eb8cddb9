"""The ``connection-budget`` finding: what a deployment can hold against what the database
server allows. The arithmetic on described engines (no wire involved), then the check
against a real PostgreSQL, reading its limit only when asked."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from flask_uwsgi_dbfix.check.budget import WARN_SHARE, compute, server_key
from flask_uwsgi_dbfix.check.findings.budget import connection_budget
from flask_uwsgi_dbfix.check.report import (
    BudgetOptions,
    DatabaseBudget,
    EngineReport,
    PreforkConnection,
)
from flask_uwsgi_dbfix.check.uwsgi_ini import UwsgiSettings, read_ini, settings_from_ini
from harness.postgres import PostgresServer, postgres_server

ROOT = Path(__file__).resolve().parent.parent
DB = "postgresql+psycopg2://app:***@db.example:5432/shop"


def engine(
    name: str = "default",
    url: str = DB,
    pool_class: str = "QueuePool",
    size: int | None = 5,
    overflow: int | None = 10,
) -> EngineReport:
    return EngineReport(name, "flask-sqlalchemy", url, "postgresql", "psycopg2", pool_class,
                        size, overflow, 0, True)  # fmt: skip


def settings(tmp_path: Path, text: str) -> UwsgiSettings:
    path = tmp_path / "uwsgi.ini"
    path.write_text("[uwsgi]\n" + text)
    return settings_from_ini(read_ini(str(path)))


def one(
    engines: list[EngineReport],
    ini: UwsgiSettings | None,
    prefork: tuple[PreforkConnection, ...] = (),
    options: BudgetOptions | None = None,
) -> DatabaseBudget:
    (budget,) = compute(engines, prefork, ini, options or BudgetOptions())
    return budget


def held_at_fork(name: str = "default", checked_out: bool = False) -> PreforkConnection:
    return PreforkConnection(name, DB, 1, checked_out, None)


def test_threads_below_the_pool_hold_one_connection_each(tmp_path: Path) -> None:
    budget = one([engine()], settings(tmp_path, "master = true\nprocesses = 8\nthreads = 4\n"))
    assert (budget.per_worker, budget.workers, budget.total) == (4, 8, 32)
    assert budget.arithmetic == "8 workers x (4 on 'default' (4 threads, pool 5 + 10))"


def test_threads_above_the_pool_hold_the_pools_capacity(tmp_path: Path) -> None:
    small = engine(size=2, overflow=1)
    budget = one([small], settings(tmp_path, "processes = 4\nthreads = 16\n"))
    assert (budget.per_worker, budget.total) == (3, 12)


def test_the_issues_deployment_three_engines_eight_by_four(tmp_path: Path) -> None:
    engines = [engine("default"), engine("reports"), engine("audit")]
    ini = settings(tmp_path, "master = true\nprocesses = 8\nthreads = 4\n")
    budget = one(engines, ini, options=BudgetOptions(db_max_connections=17))
    assert (budget.per_worker, budget.total, budget.limit) == (12, 96, 17)
    (finding,) = connection_budget_of(budget)
    assert finding.severity == "error"
    assert "up to 96 connections to the database server db.example:5432 (shop)" in finding.message
    assert "The server allows 17 (from --db-max-connections)" in finding.message
    assert finding.fix is not None and "PgBouncer" in finding.fix


def test_nullpool_and_singleton_pools_hold_one_per_thread_static_one(tmp_path: Path) -> None:
    ini = settings(tmp_path, "processes = 2\nthreads = 8\n")
    assert one([engine(pool_class="NullPool", size=None, overflow=None)], ini).per_worker == 8
    assert one([engine(pool_class="SingletonThreadPool", size=None)], ini).per_worker == 8
    assert one([engine(pool_class="StaticPool", size=None)], ini).per_worker == 1


def test_every_database_on_one_server_adds_up_and_other_servers_are_apart(
    tmp_path: Path,
) -> None:
    """max_connections is the server's: two databases on it share it."""
    analytics = "postgresql+psycopg2://app:***@db.example:5432/analytics"
    replica = "postgresql+psycopg2://app:***@replica.example:5432/shop"
    engines = [engine("default"), engine("analytics", url=analytics), engine("ro", url=replica)]
    found = compute(engines, (), settings(tmp_path, "processes = 3\n"), BudgetOptions())
    assert {b.server: (b.databases, b.engines, b.total) for b in found} == {
        "db.example:5432": (("shop", "analytics"), ("default", "analytics"), 6),
        "replica.example:5432": (("shop",), ("ro",), 3),
    }


def test_sqlite_needs_no_server_and_has_no_budget() -> None:
    assert server_key("sqlite:////tmp/app.db") is None
    assert compute([engine(url="sqlite:////tmp/app.db")], (), None, BudgetOptions()) == ()
    assert server_key("mysql+pymysql://app:***@db/shop") == "db:3306"


def test_cheaper_forks_at_most_processes_and_mules_and_spoolers_add_one_each(
    tmp_path: Path,
) -> None:
    ini = settings(
        tmp_path,
        "processes = 6\ncheaper = 2\nthreads = 2\nmules = 2\nmule = extra.py\n"
        "spooler = /tmp/a\nspooler = /tmp/b\nspooler-processes = 2\n",
    )
    budget = one([engine(), engine("second")], ini)
    # 6 workers x 2 threads x 2 engines + (3 mules + 2 x 2 spoolers) x 2 engines
    assert (budget.workers, budget.single_threaded, budget.total) == (6, 7, 24 + 14)


def test_the_masters_own_connections_count_unless_it_closes_them_or_never_loads(
    tmp_path: Path,
) -> None:
    kept = (held_at_fork(), held_at_fork(checked_out=True))
    assert one([engine()], settings(tmp_path, "processes = 2\n"), kept).master == 2
    closes = settings(tmp_path, "processes = 2\npy-call-uwsgi-fork-hooks = true\n")
    assert one([engine()], closes, kept).master == 1  # the checked-out one stays
    lazy = settings(tmp_path, "processes = 2\nlazy-apps = true\n")
    assert one([engine()], lazy, kept).master == 0


def test_instances_multiply_and_the_share_decides_warning_or_note(tmp_path: Path) -> None:
    ini = settings(tmp_path, "processes = 10\n")  # 10 per instance
    warned = one([engine()], ini, options=BudgetOptions(db_max_connections=24, instances=2))
    assert warned.total == 20 and 20 > WARN_SHARE * 24
    assert [f.severity for f in connection_budget_of(warned)] == ["warning"]
    fine = one([engine()], ini, options=BudgetOptions(db_max_connections=100, instances=2))
    assert [f.severity for f in connection_budget_of(fine)] == ["note"]
    unknown = one([engine()], ini)
    (note,) = connection_budget_of(unknown)
    assert note.severity == "note" and "--db-max-connections" in note.message


def connection_budget_of(budget: DatabaseBudget) -> list:  # type: ignore[type-arg]
    class Report:
        pass

    report = Report()
    report.budget = (budget,)  # type: ignore[attr-defined]
    return connection_budget(report)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def small_pg() -> Iterator[PostgresServer]:
    """A real server with a small managed database's limit: 20, so 17 for the app's role."""
    with postgres_server(max_connections=20) as server:
        yield server


def _check(
    server: PostgresServer, tmp_path: Path, ini: str, *options: str
) -> tuple[int, dict[str, Any]]:
    path = tmp_path / "uwsgi.ini"
    path.write_text(ini)
    env = {**os.environ, "DATABASE_URL": server.url()}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.cli_apps.three_binds_app", "dbfix",
         "check", "--ini", str(path), "--json", *options],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert server.password not in done.stdout + done.stderr
    return done.returncode, json.loads(done.stdout)


def test_the_issues_deployment_against_a_server_allowing_17_fails_only_when_told(
    small_pg: PostgresServer, tmp_path: Path
) -> None:
    ini = "[uwsgi]\nmaster = true\nprocesses = 8\nthreads = 4\nmodule = x:app\n"
    status, report = _check(small_pg, tmp_path, ini)
    (budget,) = report["connection_budget"]
    assert set(budget) == {
        "server", "databases", "engines", "per_worker", "workers", "single_threaded",
        "per_single_threaded", "master", "per_instance", "instances", "total", "limit",
        "limit_source", "arithmetic",
    }  # fmt: skip
    assert budget["limit"] is None, "no connection to read a limit without the option"
    # 8 workers x 3 engines x 4 threads, and the master keeps its import-time connection.
    assert (budget["per_worker"], budget["master"], budget["total"]) == (12, 1, 97)
    assert status == 0

    status, report = _check(small_pg, tmp_path, ini, "--db-max-connections-from-server")
    (budget,) = report["connection_budget"]
    # max_connections 20 - superuser_reserved_connections 3 (the default) = 17.
    assert (budget["limit"], budget["limit_source"]) == (17, "server")
    (finding,) = [f for f in report["findings"] if f["code"] == "connection-budget"]
    assert finding["severity"] == "error" and status == 1
    assert (budget["server"], budget["databases"]) == (f"127.0.0.1:{small_pg.port}", ["app"])

    status, report = _check(small_pg, tmp_path, ini, "--db-max-connections", "200")
    assert [f["severity"] for f in report["findings"] if f["code"] == "connection-budget"] == [
        "note"
    ]


@pytest.mark.parametrize("bad", ["0", "-3", "many"])
def test_a_bad_limit_is_a_usage_error(bad: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "flask_uwsgi_dbfix", "check", "--db-max-connections", bad],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert "Error: Invalid value for '--db-max-connections'" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "options", "warned"),
    [
        ("postgresql+psycopg://app:pw@pgbouncer:6432/shop", {}, True),
        ("postgresql+psycopg://app:pw@pgbouncer:6432/shop", {"prepare_threshold": None}, False),
        ("postgresql+psycopg://app:pw@db:5432/shop", {}, False),
        ("postgresql+psycopg2://app:pw@pgbouncer:6432/shop", {}, False),
    ],
    ids=["psycopg3-6432", "threshold-none", "port-5432", "psycopg2"],
)
def test_psycopg3_through_pgbouncers_port_must_not_prepare_statements(
    tmp_path: Path, url: str, options: dict[str, object], warned: bool
) -> None:
    """Read from the engine's connect arguments, without connecting (the hosts do not
    exist); tests/servers/test_pgbouncer.py proves the failure it warns about."""
    pytest.importorskip("psycopg")
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy

    from flask_uwsgi_dbfix.check import build_report

    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = url
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"connect_args": options}
    SQLAlchemy(app)
    with app.app_context():
        report = build_report(app, default_ini=str(tmp_path / "none.ini"))
    found = [f for f in report.findings if f.code == "pgbouncer-prepared-statements"]
    assert bool(found) is warned, report.findings
    assert all("pw" not in f.message for f in found)


def test_a_server_that_cannot_be_asked_is_one_masked_line_and_exit_2(tmp_path: Path) -> None:
    """Only with --db-max-connections-from-server does the check connect; a server that
    does not answer stops it (exit 2) in one line, the password masked, no traceback."""
    path = tmp_path / "uwsgi.ini"
    path.write_text("[uwsgi]\nmaster = true\nprocesses = 2\nmodule = x:app\n")
    url = "postgresql+psycopg2://app:s3cret-pw@127.0.0.1:1/app?connect_timeout=2"
    env = {**os.environ, "DATABASE_URL": url, "IMPORT_QUERY": "0"}
    done = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "tests.cli_apps.import_query_app", "dbfix",
         "check", "--ini", str(path), "--db-max-connections-from-server"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert (
        "could not read the connection limit of postgresql+psycopg2://app:***@127.0.0.1:1/app"
        in done.stderr
    )
    assert "s3cret-pw" not in done.stdout + done.stderr
    assert "Traceback" not in done.stderr
