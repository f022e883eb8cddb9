"""Which PostgreSQL backends belong to a given client process, from pg_stat_activity.

pg_stat_activity knows a client's address and port, not its pid; /proc knows which
sockets a process holds. Together they give the backends a process (e.g. the uWSGI
master) keeps open, which is what issue 7 counts.
"""

from __future__ import annotations

import contextlib

from harness.postgres import PostgresServer
from harness.process import local_tcp_ports


def backends_of(pg: PostgresServer, pid: int) -> list[int]:
    """Backend pids of the client connections process ``pid`` holds open."""
    ports = local_tcp_ports(pid)
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid, client_port FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND client_port IS NOT NULL"
        )
        return sorted(int(b) for b, port in cur.fetchall() if port in ports)


def backend_alive(pg: PostgresServer, backend: int) -> bool:
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (backend,))
        return bool(cur.fetchone()[0])
