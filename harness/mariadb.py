"""A throwaway MariaDB server with TLS required, for tests: the same bug, another protocol.

Debian's ``mariadb-server`` (scripts/setup.sh installs it). Every TCP connection must use TLS
(``require_secure_transport``) and clients verify the server certificate against a CA made
by trustme. The harness itself talks to the server as its administrator over the unix
socket. As root the server runs as the ``mysql`` account (``--user``), as Debian's does.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pymysql
from sqlalchemy.engine import URL

from harness.postgres import _free_port, _write_certs  # the same CA and cert set-up

SERVER_ACCOUNT = "mysql"
START_TIMEOUT = 60.0  # seconds; a cold start with a fresh data dir takes 1-3 here
_processes: dict[int, subprocess.Popen[bytes]] = {}  # by pid: reaped by _stop, never leaked


@dataclass(frozen=True)
class MariaDBServer:
    """A running server; ``root`` holds its data dir, socket, certs, pid file and log."""

    host: str
    port: int
    root: Path
    ca_cert: Path
    user: str
    password: str = field(repr=False)  # kept out of tracebacks and pytest output
    dbname: str
    pid: int

    @property
    def socket(self) -> Path:
        return self.root / "mysqld.sock"

    @property
    def log_path(self) -> Path:
        return self.root / "mariadb.log"

    def url(self, *, driver: str = "mysql+pymysql", dbname: str | None = None) -> str:
        """SQLAlchemy URL with the real password and TLS verified; never print it."""
        return self._url(driver, dbname).render_as_string(hide_password=False)

    def masked_url(self, *, driver: str = "mysql+pymysql") -> str:
        return self._url(driver, None).render_as_string(hide_password=True)

    def _url(self, driver: str, dbname: str | None) -> URL:
        return URL.create(
            driver,
            username=self.user,
            password=self.password,
            host=self.host,
            port=self.port,
            database=dbname or self.dbname,
            query={"ssl_ca": str(self.ca_cert), "ssl_check_hostname": "true"},
        )

    def admin_connect(self) -> Any:
        """The administrator over the unix socket (no password: the ``unix_socket`` plugin),
        autocommit."""
        return pymysql.connect(unix_socket=str(self.socket), user=_admin_user(), autocommit=True)


def _admin_user() -> str:
    """``mariadb-install-db`` gives root and the OS user who ran it ``unix_socket`` access."""
    return "root" if os.geteuid() == 0 else getpass.getuser()


def find_server() -> tuple[Path, Path]:
    """``mariadbd`` and ``mariadb-install-db`` from Debian's package, or PATH."""
    daemon = shutil.which("mariadbd") or shutil.which("mariadbd", path="/usr/sbin:/usr/bin")
    install = shutil.which("mariadb-install-db", path=f"{os.environ.get('PATH', '')}:/usr/bin")
    if not daemon or not install:
        raise RuntimeError(
            "MariaDB server binaries not found: run scripts/setup.sh (installs mariadb-server)"
        )
    return Path(daemon), Path(install)


def _account() -> pwd.struct_passwd | None:
    """mariadbd refuses to run as root unless told which account to switch to."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVER_ACCOUNT)
    except KeyError as exc:
        raise RuntimeError(
            f"no {SERVER_ACCOUNT!r} account: Debian's mariadb-server package creates it"
        ) from exc


def _log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"(no server log: {e})"


def start_mariadb() -> MariaDBServer:
    """A fresh data dir, a server on 127.0.0.1 with TLS required, an app user and database."""
    daemon, install = find_server()
    account = _account()
    root = Path(tempfile.mkdtemp(prefix="dbfix-mariadb-", dir="/tmp"))
    process: subprocess.Popen[bytes] | None = None
    try:
        root.chmod(0o755)  # ca.crt must be readable by any user (e.g. uWSGI workers)
        datadir = root / "data"
        user_option = [f"--user={account.pw_name}"] if account is not None else []
        if account is not None:
            os.chown(root, account.pw_uid, account.pw_gid)
        done = subprocess.run(
            [
                str(install), "--no-defaults", f"--datadir={datadir}", *user_option,
                "--auth-root-authentication-method=socket", "--skip-test-db",
            ],  # fmt: skip
            cwd=root, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed:\n{done.stdout}{done.stderr}")
        ca_path, cert_path, key_path = _write_certs(root, account)
        port = _free_port()
        log_path = root / "mariadb.log"
        process = subprocess.Popen(
            [
                str(daemon), "--no-defaults", f"--datadir={datadir}", *user_option,
                f"--socket={root / 'mysqld.sock'}", f"--port={port}", "--bind-address=127.0.0.1",
                f"--pid-file={root / 'mariadb.pid'}", f"--log-error={log_path}",
                f"--ssl-ca={ca_path}", f"--ssl-cert={cert_path}", f"--ssl-key={key_path}",
                "--require-secure-transport=ON", "--skip-name-resolve", "--skip-log-bin",
                "--innodb-buffer-pool-size=16M", "--innodb-log-file-size=8M",
                "--max-connections=300", "--performance-schema=OFF",
            ],  # fmt: skip
            cwd=root, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, start_new_session=True,
        )  # fmt: skip
        _processes[process.pid] = process
        server = MariaDBServer(
            host="127.0.0.1",
            port=port,
            root=root,
            ca_cert=ca_path,
            user="app",
            password=secrets.token_urlsafe(12),
            dbname="app",
            pid=process.pid,
        )
        _wait_ready(server, process)
        _create_app_user(server)
    except BaseException:
        _stop(root, process.pid if process is not None else None)
        raise
    atexit.register(_stop_at_exit, server, os.getpid())
    return server


def _wait_ready(server: MariaDBServer, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            raise RuntimeError(
                f"mariadbd exited with {process.returncode}:\n{_log_tail(server.log_path)}"
            )
        if server.socket.exists():  # created once it accepts connections
            try:
                server.admin_connect().close()
                return
            except pymysql.err.OperationalError:
                pass
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"MariaDB not ready after {START_TIMEOUT:.0f} s:\n{_log_tail(server.log_path)}"
            )
        time.sleep(0.1)


def _create_app_user(server: MariaDBServer) -> None:
    """The app's user may only connect over TLS (``REQUIRE SSL``), from 127.0.0.1."""
    with contextlib.closing(server.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE `{server.dbname}`")
        cur.execute(
            f"CREATE USER '{server.user}'@'127.0.0.1' IDENTIFIED BY %s REQUIRE SSL",
            (server.password,),
        )
        cur.execute(f"GRANT ALL ON `{server.dbname}`.* TO '{server.user}'@'127.0.0.1'")


def _stop(root: Path, pid: int | None) -> None:
    """SIGTERM (a clean shutdown), then SIGKILL after 30 s; then the directory goes."""
    process = _processes.pop(pid, None) if pid is not None else None
    if process is not None and process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    shutil.rmtree(root, ignore_errors=True)


def _stop_at_exit(server: MariaDBServer, owner_pid: int) -> None:
    """Safety net if the caller forgets or dies; a forked child must not stop the server."""
    if os.getpid() == owner_pid:
        stop_mariadb(server)


def stop_mariadb(server: MariaDBServer) -> None:
    """Stop the server and delete its dir; idempotent, never raises."""
    try:
        _stop(server.root, server.pid)
    except Exception as e:  # a cleanup must not hide the test's own failure
        print(f"harness.mariadb: stop failed: {e!r}", file=sys.stderr)


@contextlib.contextmanager
def mariadb_server() -> Iterator[MariaDBServer]:
    server = start_mariadb()
    try:
        yield server
    finally:
        stop_mariadb(server)


def main() -> None:
    """``python -m harness.mariadb``: a server for manual poking, until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    server = start_mariadb()
    try:
        url_file = server.root / "url.txt"
        url_file.touch(mode=0o600)
        url_file.write_text(server.url() + "\n")
        print(f"MariaDB ready: {server.masked_url()}", flush=True)
        print(f"real URL (with password) in: {url_file}", flush=True)
        print(f"admin: mariadb --socket={server.socket} -u {_admin_user()}", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        stop_mariadb(server)
    print("MariaDB stopped", flush=True)


if __name__ == "__main__":
    main()
