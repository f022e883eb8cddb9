"""A throwaway PostgreSQL server with SSL on, for tests, the demo and benchmarks.

The fork bug shows up as TLS record corruption, so the server must speak SSL: every TCP
connection is forced onto SSL by pg_hba.conf (``hostnossl ... reject``), and clients verify the
server certificate (``sslmode=verify-full``) against a CA made by trustme.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg2
import psycopg2.extensions
import trustme
from psycopg2 import sql
from sqlalchemy.engine import URL

SUPERUSER = "postgres"
FALLBACK_SERVER_USER = "dbfix-pg"


@dataclass(frozen=True)
class PostgresServer:
    """A running server; ``root`` holds its data dir, socket, certs and log."""

    host: str
    port: int
    root: Path
    ca_cert: Path
    user: str
    password: str = field(repr=False)  # kept out of tracebacks and pytest output
    dbname: str
    bindir: Path

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def log_path(self) -> Path:
        return self.root / "postgres.log"

    def url(
        self,
        *,
        driver: str | None = None,
        dbname: str | None = None,
        sslmode: str = "verify-full",
    ) -> str:
        """SQLAlchemy URL with the real password; never print it (use ``masked_url``).

        ``driver`` defaults to ``$DBFIX_TEST_DRIVER`` (the matrix's driver dimension),
        else ``postgresql+psycopg2``."""
        return self._url(driver, dbname, sslmode).render_as_string(hide_password=False)

    def masked_url(self, *, driver: str | None = None, dbname: str | None = None) -> str:
        """The same URL with the password replaced by ``***``: safe for logs."""
        return self._url(driver, dbname, "verify-full").render_as_string(hide_password=True)

    def _url(self, driver: str | None, dbname: str | None, sslmode: str) -> URL:
        return URL.create(
            driver or default_driver(),
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=dbname or self.dbname,
            query={"sslmode": sslmode, "sslrootcert": str(self.ca_cert)},
        )

    def create_database(self, name: str) -> str:
        """Create another database owned by ``user`` (one per test keeps tests independent)."""
        with contextlib.closing(self.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(name), sql.Identifier(self.user)
                )
            )
        return self.url(dbname=name)

    def admin_connect(self) -> Any:
        """Superuser connection over the unix socket (no SSL, no password), autocommit."""
        conn = psycopg2.connect(
            host=str(self.root), port=self.port, user=SUPERUSER, dbname="postgres"
        )
        conn.autocommit = True
        return conn

    def backend_ssl(self) -> dict[int, bool]:
        """pid -> uses SSL, for every client backend except this query's own one.

        Lets tests prove that every connection the app opened is encrypted.
        """
        with contextlib.closing(self.admin_connect()) as conn, conn.cursor() as cur:
            cur.execute(
                "SELECT a.pid, s.ssl FROM pg_stat_activity a"
                " JOIN pg_stat_ssl s ON s.pid = a.pid"
                " WHERE a.backend_type = 'client backend' AND a.pid <> pg_backend_pid()"
            )
            return {int(pid): bool(ssl) for pid, ssl in cur.fetchall()}


def default_driver() -> str:
    """The SQLAlchemy driver tests use unless they name one: ``$DBFIX_TEST_DRIVER``."""
    return os.environ.get("DBFIX_TEST_DRIVER") or "postgresql+psycopg2"


def find_bindir() -> Path:
    """Newest Debian PostgreSQL (``DBFIX_PG_BINDIR`` wins), else whatever ``initdb`` is on PATH."""
    override = os.environ.get("DBFIX_PG_BINDIR")
    if override:
        if not (Path(override) / "initdb").is_file():
            raise RuntimeError(f"DBFIX_PG_BINDIR={override!r} has no initdb")
        return Path(override)

    def version(p: Path) -> tuple[int, ...]:
        return tuple(int(x) for x in re.findall(r"\d+", p.parent.name))

    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=version)
    if candidates:
        return candidates[-1].parent
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    raise RuntimeError(
        "PostgreSQL server binaries not found: run scripts/setup.sh "
        "(installs postgresql-15) or set DBFIX_PG_BINDIR to a dir containing initdb"
    )


def _server_account() -> pwd.struct_passwd | None:
    """initdb and postgres refuse root, so as root run them as an unprivileged user."""
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, FALLBACK_SERVER_USER):
        with contextlib.suppress(KeyError):
            return pwd.getpwnam(name)
    subprocess.run(
        [
            "useradd",
            "--system",
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            FALLBACK_SERVER_USER,
        ],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam(FALLBACK_SERVER_USER)


def _run_as(
    account: pwd.struct_passwd | None, cmd: list[str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["LC_ALL"] = "C"
    if account is None:
        return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    env.update(HOME=str(cwd), USER=account.pw_name, LOGNAME=account.pw_name)
    return subprocess.run(
        cmd,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        user=account.pw_uid,
        group=account.pw_gid,
        extra_groups=[],
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chown(path: Path, account: pwd.struct_passwd | None) -> None:
    if account is not None:
        os.chown(path, account.pw_uid, account.pw_gid)


def _write_certs(root: Path, account: pwd.struct_passwd | None) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    ca_path, cert_path, key_path = root / "ca.crt", root / "server.crt", root / "server.key"
    ca.cert_pem.write_to_path(str(ca_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    key_path.touch(mode=0o600)
    cert.private_key_pem.write_to_path(str(key_path))
    ca_path.chmod(0o644)
    cert_path.chmod(0o644)
    key_path.chmod(0o600)
    for p in (ca_path, cert_path, key_path):
        _chown(p, account)
    return ca_path, cert_path, key_path


HBA = """\
# Written by harness.postgres: unix socket for the harness, SSL-only TCP for everyone else.
local     all all                trust
hostssl   all all 127.0.0.1/32   scram-sha-256
hostnossl all all 127.0.0.1/32   reject
"""


def _log_tail(path: Path, start: int = 0, lines: int = 30) -> str:
    try:
        with path.open("rb") as f:
            f.seek(start)
            text = f.read().decode(errors="replace")
    except OSError as e:
        return f"(no server log: {e})"
    return "\n".join(text.splitlines()[-lines:])


def start_postgres(*, port: int | None = None, max_connections: int = 300) -> PostgresServer:
    """initdb + start a fresh server on 127.0.0.1 with an app role and database.
    ``max_connections``: the tests' default leaves room for every uWSGI worker; the
    connection-budget tests start one with the low limit a small managed database has."""
    bindir = find_bindir()
    account = _server_account()
    root = Path(tempfile.mkdtemp(prefix="dbfix-pg-", dir="/tmp"))
    try:
        root.chmod(0o755)  # ca.crt must be readable by any user (e.g. uWSGI workers)
        _chown(root, account)
        datadir = root / "data"
        done = _run_as(
            account,
            [
                str(bindir / "initdb"),
                "-D",
                str(datadir),
                "--no-sync",
                "--auth=trust",
                "-U",
                SUPERUSER,
                "-E",
                "UTF8",
                "--locale=C",
            ],
            root,
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{done.stdout}{done.stderr}")
        (datadir / "pg_hba.conf").write_text(HBA)
        _, cert_path, key_path = _write_certs(root, account)
        log_path = root / "postgres.log"

        tries = 1 if port is not None else 5
        for attempt in range(tries):
            chosen = port if port is not None else _free_port()
            log_start = log_path.stat().st_size if log_path.exists() else 0
            options = (
                f"-p {chosen} -c listen_addresses=127.0.0.1 -c unix_socket_directories={root}"
                f" -c ssl=on -c ssl_cert_file={cert_path} -c ssl_key_file={key_path}"
                " -c password_encryption=scram-sha-256 -c fsync=off"
                f" -c max_connections={max_connections}"
            )
            done = _run_as(
                account,
                [
                    str(bindir / "pg_ctl"),
                    "-w",
                    "-t",
                    "30",
                    "-D",
                    str(datadir),
                    "-l",
                    str(log_path),
                    "-o",
                    options,
                    "start",
                ],
                root,
            )
            if done.returncode == 0:
                break
            tail = _log_tail(log_path, log_start)
            if "already in use" in tail and attempt + 1 < tries:
                _run_as(
                    account,
                    [str(bindir / "pg_ctl"), "-D", str(datadir), "-m", "immediate", "-w", "stop"],
                    root,
                )
                continue
            raise RuntimeError(
                f"PostgreSQL did not start on port {chosen} ({done.returncode}):\n"
                f"{done.stdout}{done.stderr}\n--- server log tail ---\n{tail}"
            )

        server = PostgresServer(
            host="127.0.0.1",
            port=chosen,
            root=root,
            ca_cert=root / "ca.crt",
            user="app",
            password=secrets.token_urlsafe(12),
            dbname="app",
            bindir=bindir,
        )
        _create_app_role(server)
    except BaseException:
        _stop(root, bindir)
        raise
    atexit.register(_stop_at_exit, server, os.getpid())
    return server


def _stop_at_exit(server: PostgresServer, owner_pid: int) -> None:
    """Safety net if the caller forgets or dies; a forked child must not stop the server."""
    if os.getpid() == owner_pid:
        stop_postgres(server)


def _create_app_role(server: PostgresServer) -> None:
    """Create the app role; the password is hashed client-side so it never reaches a log."""
    with contextlib.closing(server.admin_connect()) as conn, conn.cursor() as cur:
        verifier = psycopg2.extensions.encrypt_password(
            server.password, server.user, conn, "scram-sha-256"
        )
        cur.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(server.user), sql.Literal(verifier)
            )
        )
        cur.execute(
            sql.SQL("CREATE DATABASE {} OWNER {}").format(
                sql.Identifier(server.dbname), sql.Identifier(server.user)
            )
        )


def _postmaster_pid(datadir: Path) -> int | None:
    try:
        return int((datadir / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def process_alive(pid: int) -> bool:
    """True if pid runs; a zombie counts as dead (PID 1 here may be slow to reap orphans)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _stop(root: Path, bindir: Path) -> None:
    datadir = root / "data"
    pid = _postmaster_pid(datadir)
    if pid is not None and process_alive(pid):
        owner = datadir.stat().st_uid
        account = pwd.getpwuid(owner) if os.geteuid() == 0 and owner != 0 else None
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _run_as(
                account,
                [
                    str(bindir / "pg_ctl"),
                    "-D",
                    str(datadir),
                    "-m",
                    "fast",
                    "-w",
                    "-t",
                    "30",
                    "stop",
                ],
                root,
            )
        if process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.02)
    shutil.rmtree(root, ignore_errors=True)


def restart_postgres(server: PostgresServer, *, mode: str = "fast") -> None:
    """Restart the server in place (same port, data and certs), as a deploy or failover does.

    ``mode`` is pg_ctl's shutdown mode: ``fast`` ends every session at once (clients see
    their connection closed), ``immediate`` is a crash. pg_ctl reuses the options of the last
    start (postmaster.opts). Raises if the server does not come back within 30 s.
    """
    owner = server.datadir.stat().st_uid
    account = pwd.getpwuid(owner) if os.geteuid() == 0 and owner != 0 else None
    done = _run_as(
        account,
        [
            str(server.bindir / "pg_ctl"),
            "-D",
            str(server.datadir),
            "-l",
            str(server.log_path),
            "-m",
            mode,
            "-w",
            "-t",
            "30",
            "restart",
        ],  # fmt: skip
        server.root,
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"PostgreSQL restart failed ({done.returncode}):\n{done.stdout}{done.stderr}\n"
            f"--- server log tail ---\n{_log_tail(server.log_path)}"
        )


def stop_postgres(server: PostgresServer) -> None:
    """Stop the server and delete its dir; idempotent, never raises."""
    try:
        _stop(server.root, server.bindir)
    except Exception as e:  # a cleanup must not hide the test's own failure
        print(f"harness.postgres: stop failed: {e!r}", file=sys.stderr)


@contextlib.contextmanager
def postgres_server(*, max_connections: int = 300) -> Iterator[PostgresServer]:
    server = start_postgres(max_connections=max_connections)
    try:
        yield server
    finally:
        stop_postgres(server)


def main() -> None:
    """``python -m harness.postgres``: a server for manual poking, until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = start_postgres()
    try:
        url_file = server.root / "url.txt"
        url_file.touch(mode=0o600)
        url_file.write_text(server.url() + "\n")
        print(f"PostgreSQL ready: {server.masked_url()}", flush=True)
        print(f"real URL (with password) in: {url_file}", flush=True)
        print(f"admin: psql -h {server.root} -p {server.port} -U {SUPERUSER}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:  # a second Ctrl-C must not interrupt the cleanup
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_postgres(server)
    print("PostgreSQL stopped", flush=True)


if __name__ == "__main__":
    main()
