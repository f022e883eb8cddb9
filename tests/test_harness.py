"""The harness itself, against real servers: every other real-server test trusts these facts."""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import psycopg2
import pytest

from harness.load import NOT_SENT, get_json, run_load
from harness.postgres import (
    PostgresServer,
    _postmaster_pid,
    postgres_server,
    process_alive,
    restart_postgres,
    start_postgres,
    stop_postgres,
)
from harness.process import start_process
from harness.redis import redis_server
from harness.uwsgi import group_pids, run_uwsgi_to_exit, start_uwsgi

REPO = Path(__file__).resolve().parent.parent

APP = textwrap.dedent(
    """
    import json
    import os

    def application(environ, start_response):
        if environ["PATH_INFO"] == "/ping":
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"pong"]
        if environ["PATH_INFO"] == "/pid":
            start_response("200 OK", [("Content-Type", "application/json")])
            return [json.dumps({"pid": os.getpid()}).encode()]
        start_response("404 Not Found", [("Content-Type", "application/json")])
        return [b'{"error": "no such route"}']
    """
)


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    with postgres_server() as server:
        yield server


def test_tcp_connection_is_ssl_and_verified(pg: PostgresServer) -> None:
    conn = psycopg2.connect(pg.url(driver="postgresql"))
    try:
        with conn.cursor() as cur:
            cur.execute(
                "SELECT ssl, pg_backend_pid() FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
            )
            ssl, pid = cur.fetchone()
            cur.execute(
                "SELECT current_user, current_database(), rolsuper FROM pg_roles"
                " WHERE rolname = current_user"
            )
            assert cur.fetchone() == (pg.user, pg.dbname, False)
        assert ssl is True
        assert pg.backend_ssl()[pid] is True
    finally:
        conn.close()


def test_tcp_without_ssl_is_refused(pg: PostgresServer) -> None:
    with pytest.raises(psycopg2.OperationalError, match="no encryption"):
        psycopg2.connect(pg.url(driver="postgresql", sslmode="disable"))


def test_wrong_password_is_refused(pg: PostgresServer) -> None:
    url = pg.url(driver="postgresql").replace(pg.password, "wrong-password")
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        psycopg2.connect(url)


def test_create_database_is_owned_by_app_user(pg: PostgresServer) -> None:
    url = pg.create_database("harness_extra")
    conn = psycopg2.connect(url.replace("postgresql+psycopg2://", "postgresql://"))
    try:
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE t (x int)")  # only possible as owner of the public schema
            cur.execute("SELECT current_database()")
            assert cur.fetchone() == ("harness_extra",)
    finally:
        conn.close()


def test_password_is_never_printed(pg: PostgresServer) -> None:
    assert pg.password not in pg.masked_url()
    assert pg.password not in repr(pg)
    proc = subprocess.Popen(
        [sys.executable, "-m", "harness.postgres"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    with proc:
        assert proc.stdout is not None
        printed = [proc.stdout.readline() for _ in range(3)]
        url_file = Path(printed[1].rsplit(" ", 1)[1].strip())
        password = psycopg2.extensions.parse_dsn(
            url_file.read_text().strip().replace("postgresql+psycopg2://", "postgresql://")
        )["password"]
        root = url_file.parent
        log = (root / "postgres.log").read_text()
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=90)  # pg_ctl stop waits up to 30 s, then SIGKILL
    output = "".join(printed) + rest
    assert "***" in printed[0] and "stopped" in rest
    assert len(password) >= 12
    assert password not in output
    assert password not in log
    assert not root.exists()


def test_stop_removes_dir_and_process() -> None:
    server = start_postgres()
    postmaster = int((server.datadir / "postmaster.pid").read_text().split()[0])
    assert process_alive(postmaster)
    stop_postgres(server)
    assert not server.root.exists()
    assert not process_alive(postmaster)
    stop_postgres(server)  # idempotent, does not raise


@pytest.fixture
def app_dir(tmp_path: Path) -> Path:
    (tmp_path / "app.py").write_text(APP)
    return tmp_path


def test_uwsgi_workers_serve_load_and_stop_cleanly(app_dir: Path) -> None:
    server = start_uwsgi(
        ["--master", "--processes", "2", "--wsgi-file", "app.py", "--need-app"],
        cwd=app_dir,
        processes=2,
        log_dir=app_dir,
    )
    try:
        workers = server.worker_pids()
        assert len(workers) == 2
        assert server.pss_kib() > 0
        assert get_json(server.base_url, "/ping") == (200, "pong")
        result = run_load(server.base_url, "/pid", total=50, concurrency=4)
        assert result.failures == Counter()
        assert len(result.ok) == result.requests == 50
        assert {body["pid"] for body in result.ok} <= set(workers)
        missing = run_load(server.base_url, "/missing", total=3, concurrency=2)
        assert missing.failures == Counter({"no such route": 3})
        assert missing.errors == [{"error": "no such route"}] * 3
        assert missing.transport_failures == 0
    finally:
        server.stop()
    assert server.process.returncode is not None
    assert group_pids(server.process.pid) == []
    assert not any(process_alive(pid) for pid in workers)
    assert "spawned uWSGI worker 2" in server.log()
    server.stop()  # idempotent


def test_uwsgi_start_failure_shows_log(app_dir: Path) -> None:
    (app_dir / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    with pytest.raises(RuntimeError, match="boom at import"):
        start_uwsgi(
            ["--master", "--processes", "1", "--wsgi-file", "broken.py", "--need-app"],
            cwd=app_dir,
            processes=1,
            timeout=20,
            log_dir=app_dir,
        )


def test_load_counts_every_failure_without_raising() -> None:
    refused = run_load("http://127.0.0.1:9", "/", total=5, concurrency=2, timeout=2)
    assert refused.requests == 5 and refused.ok == []
    assert refused.failed == 5
    assert refused.transport_failures == 5 and refused.errors == []
    late = run_load("http://127.0.0.1:9", "/", total=7, concurrency=2, deadline=-1)
    assert late.failures == Counter({NOT_SENT: 7})
    with pytest.raises(ValueError):
        run_load("http://example.com:80", "/", total=1, concurrency=1)


def test_child_process_does_not_stop_server(pg: PostgresServer) -> None:
    """The atexit safety net must not fire in a forked child (it would kill the shared server)."""
    pid = os.fork()
    if pid == 0:
        try:
            atexit._run_exitfuncs()  # what a normal interpreter exit in the child would do
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    conn = psycopg2.connect(pg.url(driver="postgresql"))
    conn.close()


def test_postgres_restart_keeps_port_data_and_password() -> None:
    server = start_postgres()
    try:
        conn = psycopg2.connect(server.url(driver="postgresql"))
        before = _postmaster_pid(server.datadir)
        restart_postgres(server)
        with pytest.raises(psycopg2.OperationalError):  # its session ended with the restart
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
        conn.close()
        assert _postmaster_pid(server.datadir) != before
        again = psycopg2.connect(server.url(driver="postgresql"))
        with again.cursor() as cur:
            cur.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            assert cur.fetchone() == (True,)
        again.close()
    finally:
        stop_postgres(server)


def test_redis_starts_answers_and_stops_by_pid() -> None:
    with redis_server() as redis:
        assert redis.command("PING").startswith(b"+PONG")
        assert redis.url().startswith(f"redis://127.0.0.1:{redis.port}/")
        pid = redis.server.pid
    assert not process_alive(pid)
    assert not redis.root.exists()


def test_server_process_stop_kills_everything_it_forked(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os, time
        if os.fork() == 0:
            time.sleep(60)
        print("up", flush=True)
        time.sleep(60)
        """
    )
    server = start_process(
        [sys.executable, "-c", script],
        log_path=tmp_path / "log",
        ready=lambda s: "up" in s.log() and len(s.children()) == 1,
        timeout=20,
    )
    child = server.children()[0]
    server.stop(graceful=False)
    assert group_pids(server.pid) == []
    assert not process_alive(child)


def test_uwsgi_that_exits_by_itself_gives_status_and_log(app_dir: Path) -> None:
    (app_dir / "broken.py").write_text("raise RuntimeError('boom at import')\n")
    status, log = run_uwsgi_to_exit(
        ["--master", "--processes", "1", "--wsgi-file", "broken.py", "--need-app"],
        log_path=app_dir / "uwsgi.log",
        cwd=app_dir,
        timeout=30,
    )
    assert status != 0
    assert "boom at import" in log
