"""``connection-budget``: the connections the deployment can hold against what the database
server allows (see :mod:`flask_uwsgi_dbfix.check.budget` for the arithmetic)."""

from __future__ import annotations

from sqlalchemy.engine import make_url

from ..budget import WARN_SHARE
from ..report import CheckReport, DatabaseBudget, Finding

PGBOUNCER_PORT = 6432
"""PgBouncer's default port: the check's only sign that a URL goes through PgBouncer."""

_FIX = (
    "Lower pool_size/max_overflow (SQLALCHEMY_ENGINE_OPTIONS), threads or processes, "
    "raise the server's max_connections, or put PgBouncer in front of the database."
)


def connection_budget(report: CheckReport) -> list[Finding]:
    """Error over the server's limit, warning above :data:`WARN_SHARE` of it, else a note
    with the number (and how to compare it)."""
    return [_finding(budget) for budget in report.budget]


def _finding(budget: DatabaseBudget) -> Finding:
    instances = f" x {budget.instances} instances" if budget.instances > 1 else ""
    names = ", ".join(budget.databases)
    held = (
        f"The deployment can hold up to {budget.total} connections to the database server "
        f"{budget.server} ({names}): "
        f"{budget.arithmetic} = {budget.per_instance} per instance{instances}."
    )
    if budget.limit is None:
        return Finding(
            "connection-budget",
            "note",
            held + " Compare it with the server's limit: --db-max-connections N "
            "(max_connections minus the superuser reserve).",
        )
    source = "the server" if budget.limit_source == "server" else "--db-max-connections"
    allowed = f" The server allows {budget.limit} (from {source})."
    if budget.total > budget.limit:
        return Finding(
            "connection-budget",
            "error",
            held + allowed + " Under load, requests will fail with 'too many clients "
            "already' or 'remaining connection slots are reserved'.",
            _FIX,
        )
    if budget.total > WARN_SHARE * budget.limit:
        share = round(100 * budget.total / budget.limit)
        return Finding(
            "connection-budget",
            "warning",
            held + allowed + f" That is {share}% of it, over the {round(100 * WARN_SHARE)}% "
            "that leaves room for restarts, deploys and maintenance sessions.",
            _FIX,
        )
    return Finding("connection-budget", "note", held + allowed)


def pgbouncer_prepared_statements(report: CheckReport) -> list[Finding]:
    """``pgbouncer-prepared-statements``: psycopg 3 prepares statements on the server
    connection, and PgBouncer's transaction pooling gives the next transaction another one
    (``prepared statement "_pg3_0" does not exist``). Told by the port (6432)."""
    return [
        Finding(
            "pgbouncer-prepared-statements",
            "warning",
            f"Engine '{engine.name}' uses psycopg 3 on port {PGBOUNCER_PORT}, PgBouncer's, "
            "and lets it prepare statements: with transaction pooling a later transaction "
            "runs on another server connection and fails with 'prepared statement ... does "
            "not exist' (or 'already exists'). Session pooling is not affected.",
            'Pass connect_args={"prepare_threshold": None} (SQLALCHEMY_ENGINE_OPTIONS), or '
            "run PgBouncer 1.21+ with max_prepared_statements.",
        )
        for engine in report.engines
        if engine.prepares_statements and _port(engine.url) == PGBOUNCER_PORT
    ]


def _port(url: str) -> int | None:
    try:
        return make_url(url).port
    except Exception:
        return None
