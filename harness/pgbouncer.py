"""A throwaway PgBouncer (Debian's ``pgbouncer`` package) in front of the test PostgreSQL.

TLS on both sides, as in production: clients must use TLS (``client_tls_sslmode = require``)
and verify PgBouncer's certificate, which is the PostgreSQL server's own trustme certificate
(same CA, issued for 127.0.0.1); PgBouncer verifies PostgreSQL's (``server_tls_sslmode =
verify-full``). One process serves the app database twice: ``app_transaction`` with
transaction pooling and ``app_session`` with session pooling.

Auth: ``scram-sha-256`` with an ``auth_file`` holding the role's SCRAM verifier copied from
``pg_authid`` (never the password itself): PgBouncer then logs in to PostgreSQL with the keys
the client proved, so no plain password is stored anywhere. Started as root, PgBouncer drops
to the PostgreSQL server's unprivileged user (its ``user`` setting); it is stopped by its own
pid (the process it was started as: it never daemonizes here).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
from sqlalchemy.engine import URL

from .postgres import PostgresServer, default_driver
from .process import ServerProcess, free_port, start_process

POOL_MODES = ("transaction", "session")
PGBOUNCER = "/usr/sbin/pgbouncer"


@dataclass(frozen=True)
class PgBouncerServer:
    server: ServerProcess
    port: int
    root: Path
    ca_cert: Path
    user: str
    password: str = field(repr=False)  # kept out of tracebacks and pytest output

    def dbname(self, pool_mode: str) -> str:
        if pool_mode not in POOL_MODES:
            raise ValueError(f"pool_mode must be one of {POOL_MODES}, got {pool_mode!r}")
        return f"app_{pool_mode}"

    def url(self, pool_mode: str, *, driver: str | None = None) -> str:
        """SQLAlchemy URL through PgBouncer with the real password; never print it."""
        return self._url(pool_mode, driver).render_as_string(hide_password=False)

    def masked_url(self, pool_mode: str, *, driver: str | None = None) -> str:
        return self._url(pool_mode, driver).render_as_string(hide_password=True)

    def _url(self, pool_mode: str, driver: str | None) -> URL:
        return URL.create(
            driver or default_driver(),
            username=self.user,
            password=self.password,
            host="127.0.0.1",
            port=self.port,
            database=self.dbname(pool_mode),
            query={"sslmode": "verify-full", "sslrootcert": str(self.ca_cert)},
        )

    def log(self) -> str:
        return self.server.log()

    def show(self, what: str) -> list[dict[str, Any]]:
        """``SHOW <what>`` on PgBouncer's admin console (e.g. CLIENTS, POOLS), as dicts."""
        if not what.replace("_", "").isalpha():
            raise ValueError(f"not a SHOW subject: {what!r}")
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=self.port,
            user=self.user,
            password=self.password,
            dbname="pgbouncer",
            sslmode="verify-full",
            sslrootcert=str(self.ca_cert),
            connect_timeout=5,
        )
        conn.autocommit = True  # the admin console knows no BEGIN
        try:
            with conn.cursor() as cur:
                cur.execute(f"SHOW {what}")
                names = [c.name for c in cur.description or ()]
                return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
        finally:
            conn.close()


def _config(pg: PostgresServer, root: Path, port: int, account: pwd.struct_passwd | None) -> str:
    backend = f"host=127.0.0.1 port={pg.port} dbname={pg.dbname}"
    user_line = f"user = {account.pw_name}\n" if account is not None else ""
    return f"""\
; Written by harness.pgbouncer.
[databases]
app_transaction = {backend} pool_mode=transaction
app_session = {backend} pool_mode=session

[pgbouncer]
{user_line}listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = scram-sha-256
auth_file = {root}/userlist.txt
admin_users = {pg.user}
max_client_conn = 200
default_pool_size = 20
client_tls_sslmode = require
client_tls_cert_file = {root}/server.crt
client_tls_key_file = {root}/server.key
server_tls_sslmode = verify-full
server_tls_ca_file = {pg.ca_cert}
ignore_startup_parameters = extra_float_digits
"""


def _scram_verifier(pg: PostgresServer) -> str:
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute("SELECT rolpassword FROM pg_authid WHERE rolname = %s", (pg.user,))
        row = cur.fetchone()
    if row is None or not str(row[0]).startswith("SCRAM-SHA-256$"):
        raise RuntimeError(f"role {pg.user!r} has no SCRAM verifier")
    return str(row[0])


def _accepts_tls_login(port: int, pg: PostgresServer) -> bool:
    try:
        conn = psycopg2.connect(
            host="127.0.0.1",
            port=port,
            user=pg.user,
            password=pg.password,
            dbname="app_session",
            sslmode="verify-full",
            sslrootcert=str(pg.ca_cert),
            connect_timeout=2,
        )
    except psycopg2.OperationalError:
        return False
    conn.close()
    return True


def _server_account(pg: PostgresServer) -> pwd.struct_passwd | None:
    """PgBouncer refuses root: as root, it drops to the user that runs PostgreSQL."""
    if os.geteuid() != 0:
        return None
    return pwd.getpwuid(pg.datadir.stat().st_uid)


def start_pgbouncer(pg: PostgresServer, *, timeout: float = 30) -> PgBouncerServer:
    if not Path(PGBOUNCER).is_file():
        raise RuntimeError(f"{PGBOUNCER} not found: run scripts/setup.sh (installs pgbouncer)")
    account = _server_account(pg)
    root = Path(tempfile.mkdtemp(prefix="dbfix-pgbouncer-", dir="/tmp"))
    try:
        root.chmod(0o755)
        auth = root / "userlist.txt"
        auth.touch(mode=0o600)
        auth.write_text(f'"{pg.user}" "{_scram_verifier(pg)}"\n')
        shutil.copy(pg.root / "server.crt", root / "server.crt")
        (root / "server.key").touch(mode=0o600)
        shutil.copy(pg.root / "server.key", root / "server.key")
        last: Exception | None = None
        for _ in range(5):  # a port picked free may be taken before PgBouncer binds it
            port = free_port()
            config = root / "pgbouncer.ini"
            config.write_text(_config(pg, root, port, account))
            for path in (root, *root.iterdir()):
                if account is not None:
                    os.chown(path, account.pw_uid, account.pw_gid)

            def ready(_server: ServerProcess, port: int = port) -> bool:
                return _accepts_tls_login(port, pg)

            try:
                server = start_process(
                    [PGBOUNCER, str(config)],
                    log_path=root / "pgbouncer.log",
                    ready=ready,
                    timeout=timeout,
                )
            except RuntimeError as e:
                last = e
                continue
            return PgBouncerServer(server, port, root, pg.ca_cert, pg.user, pg.password)
        raise RuntimeError(f"pgbouncer did not start: {last}")
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise


def stop_pgbouncer(bouncer: PgBouncerServer) -> None:
    """SIGINT is PgBouncer's safe shutdown; the harness kills it if it lingers."""
    bouncer.server.stop(timeout=10, sig=signal.SIGINT)
    deadline = time.monotonic() + 5
    while bouncer.server.process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    shutil.rmtree(bouncer.root, ignore_errors=True)


@contextlib.contextmanager
def pgbouncer_server(pg: PostgresServer) -> Iterator[PgBouncerServer]:
    bouncer = start_pgbouncer(pg)
    try:
        yield bouncer
    finally:
        stop_pgbouncer(bouncer)
