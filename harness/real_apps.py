"""Real applications from PyPI, each in a virtualenv of its own, for tests that serve them
under real servers without touching their code (tests/test_real_apps.py).

An app's pins conflict with ours, so each gets its own virtualenv, cached across runs under
``~/.cache/flask-uwsgi-dbfix/real-apps/<app>-<version>/``, made with the uv that
``scripts/setup.sh`` installs on the base interpreter of ``.venv`` (never a downloaded one).
This checkout's package is installed there too, and reinstalled whenever its source
changes. Also here: what a test needs to see, from outside, whether a worker holds the
master's database socket.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.engine import URL

from .postgres import PostgresServer
from .process import socket_inodes, tcp_sockets

ROOT = Path(__file__).resolve().parent.parent
CACHE = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    / "flask-uwsgi-dbfix"
    / "real-apps"
)
"""Beside setup.sh's uv, outside the checkout: a fresh clone (CI's) reuses the app's
virtualenv, and only reinstalls this package there when its source differs."""
PACKAGE = "flask-uwsgi-dbfix"
SETUP = ROOT / "scripts" / "setup.sh"
INSTALL_TIMEOUT = 300.0


class InstallFailed(Exception):
    """The app's virtualenv could not be made (no network, the app no longer installs...).
    ``str()`` is the installer's last line: the reason a test skips with."""


@dataclass(frozen=True)
class AppSpec:
    """What goes into an app's virtualenv: the app at a pinned version, and the extra
    requirements it needs to run here (a driver, the servers, pins the app forgot)."""

    name: str
    version: str
    extra: tuple[str, ...] = ()

    @property
    def requirements(self) -> list[str]:
        return [
            f"{self.name}=={self.version}",
            *self.extra,
            "psycopg2-binary",
            "pyuwsgi",
            "gunicorn",
        ]

    @property
    def key(self) -> str:
        return f"{self.name}-{self.version}"


@dataclass(frozen=True)
class AppVenv:
    spec: AppSpec
    path: Path

    @property
    def bin(self) -> Path:
        return self.path / "bin"

    @property
    def python(self) -> Path:
        return self.bin / "python"

    @property
    def site_packages(self) -> Path:
        found = sorted((self.path / "lib").glob("python3*/site-packages"))
        if not found:
            raise RuntimeError(f"no site-packages in {self.path}")
        return found[0]

    def command(self, name: str) -> str:
        return str(self.bin / name)


def find_uv() -> Path:
    """uv as scripts/setup.sh installs it (``$UV`` wins)."""
    override = os.environ.get("UV")
    if override:
        return Path(override)
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    found = re.search(r'^UV_VERSION="([^"]+)"', SETUP.read_text(), re.M)
    if found is None:
        raise InstallFailed(f"no UV_VERSION in {SETUP}")
    return home / "flask-uwsgi-dbfix" / f"uv-{found.group(1)}" / "bin" / "uv"


def base_python() -> Path:
    """The interpreter .venv was made from (its pyvenv.cfg's ``home``), else this
    interpreter's base: the app's venv runs the suite's Python, never a downloaded one."""
    home, version = Path(sys.base_prefix) / "bin", f"{sys.version_info[0]}.{sys.version_info[1]}"
    with contextlib.suppress(OSError):
        for line in (ROOT / ".venv" / "pyvenv.cfg").read_text().splitlines():
            key, _, value = (part.strip() for part in line.partition("="))
            if key == "home":
                home = Path(value)
            elif key == "version_info":
                version = ".".join(value.split(".")[:2])
    python = home / f"python{version}"
    if not python.is_file():
        raise InstallFailed(f"no base interpreter {python}")
    return python


def package_digest(package_dir: Path) -> str:
    """Hash of a flask_uwsgi_dbfix tree's Python files (paths relative to it): the same for
    this checkout's source and a faithful install of it."""
    digest = hashlib.sha256()
    for path in sorted(package_dir.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        digest.update(path.relative_to(package_dir).as_posix().encode() + b"\0")
        digest.update(path.read_bytes() + b"\0")
    return digest.hexdigest()


def _source_stamp() -> str:
    pyproject = hashlib.sha256((ROOT / "pyproject.toml").read_bytes()).hexdigest()
    return f"{package_digest(ROOT / 'flask_uwsgi_dbfix')} {pyproject}\n"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else "no output"


def _run(cmd: list[str], *, deadline: float, env: dict[str, str]) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise InstallFailed(f"install took longer than {INSTALL_TIMEOUT:.0f}s")
    try:
        done = subprocess.run(
            cmd, env=env, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL
        )
    except subprocess.TimeoutExpired as e:
        raise InstallFailed(f"install did not finish within {INSTALL_TIMEOUT:.0f}s") from e
    except OSError as e:
        raise InstallFailed(f"{cmd[0]}: {e}") from e
    if done.returncode != 0:
        raise InstallFailed(_last_line(done.stderr + "\n" + done.stdout))


@contextlib.contextmanager
def _locked(path: Path, deadline: float) -> Iterator[None]:
    """One process at a time builds a given venv (two test runs may share the cache)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ignore = path.parent / ".gitignore"  # like a venv's or .pytest_cache's: git skips it all
    if not ignore.exists():
        ignore.write_text("# made by harness.real_apps: nothing here belongs in git\n*\n")
    with path.open("w") as lock:
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise InstallFailed(f"{path} stayed locked by another run") from None
                time.sleep(0.2)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def app_venv(spec: AppSpec, *, timeout: float = INSTALL_TIMEOUT) -> AppVenv:
    """The app's virtualenv, made on first use and kept in :data:`CACHE`;
    this checkout's package is reinstalled there whenever its source changed. Raises
    :class:`InstallFailed` (the installer's last line) when it cannot be made, and
    RuntimeError if the installed package is not this checkout's source."""
    deadline = time.monotonic() + timeout
    uv = find_uv()
    if not uv.is_file():
        raise InstallFailed(f"uv not found at {uv}: run scripts/setup.sh")
    venv = AppVenv(spec, CACHE / spec.key)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")},
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_NO_PROGRESS": "1",
    }
    python = base_python()
    # Non-editable, rebuilt from the source every time it is installed: uv's cache of a
    # local project's wheel does not notice a changed .py file.
    ours = ["--reinstall-package", PACKAGE, str(ROOT)]
    pip = [str(uv), "pip", "install", "--quiet", "--python", str(venv.python)]
    with _locked(CACHE / f"{spec.key}.lock", deadline):
        wanted = "\n".join([*spec.requirements, str(python)]) + "\n"
        marker = venv.path / ".requirements"
        if not (marker.is_file() and marker.read_text() == wanted and venv.python.is_file()):
            shutil.rmtree(venv.path, ignore_errors=True)
            _run([str(uv), "venv", "--quiet", "--python", str(python), str(venv.path)],
                 deadline=deadline, env=env)  # fmt: skip
            _run([*pip, *spec.requirements, *ours], deadline=deadline, env=env)
            marker.write_text(wanted)
            (venv.path / ".package").write_text(_source_stamp())
        stamp = venv.path / ".package"
        if not (stamp.is_file() and stamp.read_text() == _source_stamp()):
            _run([*pip, *ours], deadline=deadline, env=env)
            stamp.write_text(_source_stamp())
    installed = package_digest(venv.site_packages / "flask_uwsgi_dbfix")
    if installed != package_digest(ROOT / "flask_uwsgi_dbfix"):
        raise RuntimeError(f"{venv.path}: flask_uwsgi_dbfix there is not this checkout's source")
    return venv


# -- what the workers hold ----------------------------------------------------------------------


def _tcp_to_port(port: int) -> dict[str, int]:
    """inode -> local port of every TCP socket on this host connected to remote ``port``."""
    return {inode: local for inode, local, remote in tcp_sockets() if remote == port}


def db_sockets(pid: int, db_port: int) -> set[str]:
    """Inodes of the sockets process ``pid`` holds that are connected to ``db_port``."""
    return socket_inodes(pid) & set(_tcp_to_port(db_port))


@dataclass
class Sharing:
    """Who holds which database socket: the master and each worker, by socket inode (the
    same inode in two processes is the same socket, the same TLS session)."""

    master: set[str]
    workers: dict[int, set[str]]

    @property
    def on_masters_socket(self) -> list[int]:
        """Workers holding a socket the master holds too."""
        return sorted(pid for pid, inodes in self.workers.items() if inodes & self.master)

    @property
    def shared_between_workers(self) -> set[str]:
        seen: Counter[str] = Counter()
        for inodes in self.workers.values():
            seen.update(inodes - self.master)
        return {inode for inode, n in seen.items() if n > 1}

    @property
    def with_own_socket(self) -> list[int]:
        """Workers that hold at least one socket no other process holds."""
        others: Counter[str] = Counter()
        for inodes in self.workers.values():
            others.update(inodes)
        return sorted(
            pid
            for pid, inodes in self.workers.items()
            if any(others[i] == 1 and i not in self.master for i in inodes)
        )


def sharing(master_pid: int, worker_pids: Iterable[int], db_port: int) -> Sharing:
    return Sharing(
        master=db_sockets(master_pid, db_port),
        workers={pid: db_sockets(pid, db_port) for pid in worker_pids},
    )


def backends_on(pg: PostgresServer, inodes: Iterable[str]) -> set[int]:
    """Backend pids of the client sockets ``inodes`` (connected to ``pg``)."""
    ports = _tcp_to_port(pg.port)
    wanted = {ports[i] for i in inodes if i in ports}
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid, client_port FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND client_port IS NOT NULL"
        )
        return {int(pid) for pid, port in cur.fetchall() if port in wanted}


def backend_activity(pg: PostgresServer, backends: Iterable[int]) -> dict[int, tuple[Any, ...]]:
    """pid -> (state, state_change, query_start) of each backend still there: compare two
    readings to learn whether anyone ran a query on those sessions in between."""
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        cur.execute(
            "SELECT pid, state, state_change, query_start FROM pg_stat_activity"
            " WHERE pid = ANY(%s)",
            (sorted(backends),),
        )
        return {int(row[0]): tuple(row[1:]) for row in cur.fetchall()}


def database_url(pg: PostgresServer, dbname: str) -> str:
    """``postgresql://user:password@127.0.0.1:port/dbname?sslmode=verify-full``, with no ``%``
    in it: apps put the URL through configparser (PasteDeploy's ini, ihatemoney's alembic
    env.py), where ``%`` is interpolation and an escaped CA path stops the app at start-up.
    The CA goes in ``PGSSLROOTCERT`` instead (see :func:`libpq_env`)."""
    url = URL.create(
        "postgresql",
        username=pg.user,
        password=pg.password,
        host=pg.host,
        port=pg.port,
        database=dbname,
        query={"sslmode": "verify-full"},
    ).render_as_string(hide_password=False)
    if "%" in url:
        raise ValueError("the database URL needs %-escapes; pick another password")
    return url


def libpq_env(pg: PostgresServer) -> dict[str, str]:
    """The environment for an app's processes: libpq finds the CA there, and any stray HTTP
    call the app might make goes to a closed local port instead of the internet."""
    closed = "http://127.0.0.1:9"
    return {
        "PGSSLROOTCERT": str(pg.ca_cert),
        "http_proxy": closed,
        "https_proxy": closed,
        "HTTP_PROXY": closed,
        "HTTPS_PROXY": closed,
        "no_proxy": "",
        "NO_PROXY": "",
    }


_UWSGI_REQUEST = re.compile(
    r"\[pid: (\d+)\|app: \d+\|req: \d+/\d+\] 127\.0\.0\.1 .*? (GET \S+) => .*?"
    r"\(HTTP/1\.\d (\d+)\)"
)
GUNICORN_ACCESS_FORMAT = "dbfix-access pid=%(p)s %(m)s %(U)s %(s)s"
_GUNICORN_REQUEST = re.compile(r"dbfix-access pid=<(\d+)> (GET \S+) (\d+)")


def answered(log: str, path: str) -> Counter[int]:
    """Worker pid -> number of 200 answers to ``GET path``, from a uWSGI log or a gunicorn
    access log written with ``--access-logformat GUNICORN_ACCESS_FORMAT``."""
    found: Counter[int] = Counter()
    for pattern in (_UWSGI_REQUEST, _GUNICORN_REQUEST):
        for pid, request, status in pattern.findall(log):
            if request == f"GET {path}" and status == "200":
                found[int(pid)] += 1
    return found


# -- bounded load that counts every failure -------------------------------------------------------


@dataclass
class PageLoad:
    """Results of :func:`load_pages`: every request is either ok or counted in failures."""

    requests: int
    ok: int = 0
    failures: Counter[str] = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def failed(self) -> int:
        return sum(self.failures.values())


def load_pages(
    port: int,
    paths: Sequence[str],
    *,
    total: int,
    concurrency: int,
    expect: int = 200,
    must_contain: bytes = b"",
    timeout: float = 10.0,
    deadline: float = 90.0,
) -> PageLoad:
    """``total`` GETs to http://127.0.0.1:``port``, cycling through ``paths``, ``concurrency``
    at a time; a request is ok only with status ``expect`` and ``must_contain`` in its body.
    For apps whose pages are HTML or text (harness.load.run_load wants JSON objects). No
    request starts after ``deadline`` seconds; those count as failures."""
    result = PageLoad(requests=total)
    lock = threading.Lock()
    next_index = 0
    started = time.monotonic()

    def one(path: str) -> str:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.request("GET", path, headers={"Connection": "close"})
                response = conn.getresponse()
                body = response.read()
            finally:
                conn.close()
        except Exception as e:  # every transport error is a counted failure
            return f"{type(e).__name__}: {e}"
        if response.status != expect:
            return f"HTTP {response.status}"
        if must_contain not in body:
            return f"HTTP {response.status} without {must_contain!r}"
        return ""

    def worker() -> None:
        nonlocal next_index
        while True:
            with lock:
                if next_index >= total or time.monotonic() - started > deadline:
                    return
                index = next_index
                next_index += 1
            error = one(paths[index % len(paths)])
            with lock:
                if error:
                    result.failures[error] += 1
                else:
                    result.ok += 1

    with ThreadPoolExecutor(max_workers=max(1, concurrency)) as pool:
        for future in [pool.submit(worker) for _ in range(max(1, concurrency))]:
            future.result()
    if next_index < total:
        result.failures["not sent: deadline"] += total - next_index
    result.seconds = time.monotonic() - started
    return result
