"""The process-wide mode on real applications nobody here wrote, installed from PyPI and
served as their docs say, their code untouched: the one deployment line is the whole fix.

- ihatemoney 7.2.1 (Flask + Flask-SQLAlchemy): ``create_app()`` runs its migrations and
  leaves a connection in the pool; served by uWSGI as ``ihatemoney.wsgi:application``.
- Kotti 2.0.9 (Pyramid + plain SQLAlchemy + zope.sqlalchemy, no Flask): ``kotti.main``
  creates and populates its tables; served by uWSGI from its paste ini (``--ini-paste``), as
  its deployment docs say, and by ``gunicorn --preload --paste``.

Each app lives in a virtualenv of its own (harness.real_apps, cached in
~/.cache/flask-uwsgi-dbfix/real-apps/); when that cannot be made (no network, the app stopped
installing) the tests skip, naming
the installer's last line. Without the switch, every worker holds the master's database
socket (the same inode in /proc) and runs queries on the master's session; with it, no
request fails, no worker touches the master's session, and with fork hooks the master keeps
no connection at all.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

import pytest

from harness.gunicorn import start_gunicorn
from harness.postgres import PostgresServer
from harness.real_apps import (
    GUNICORN_ACCESS_FORMAT,
    AppSpec,
    AppVenv,
    InstallFailed,
    PageLoad,
    Sharing,
    answered,
    app_venv,
    backend_activity,
    backends_on,
    database_url,
    libpq_env,
    load_pages,
    sharing,
)
from harness.uwsgi import start_uwsgi
from tests.pgstat import backends_of

HERE = Path(__file__).resolve().parent / "real_apps"
WORKERS = 4
REQUESTS = 400
CONCURRENCY = 8
WARNING = "PreForkConnectionWarning"
WARNING_TEXT = "flask-uwsgi-dbfix: 1 database connection(s) were open when the process forked"

IHATEMONEY = AppSpec("ihatemoney", "7.2.1")
KOTTI = AppSpec(
    "kotti",
    "2.0.9",
    extra=(
        # Pins Kotti's own metadata lacks: it calls Engine.table_names() (gone in
        # SQLAlchemy 2.0) and imports pkg_resources (gone from setuptools 81); alembic
        # 1.20.1 no longer imports on SQLAlchemy 1.4 (`_NoneName`), 1.13.3 does.
        "sqlalchemy<2",
        "alembic<1.14",
        "setuptools<81",
    ),
)
MODES = ["without the switch", "with the switch", "with the switch and fork hooks"]


@dataclass
class RealApp:
    """An installed app, its database and how to ask it for a page that reads the database."""

    spec: AppSpec
    venv: AppVenv
    pg: PostgresServer
    url: str = field(repr=False)  # it holds the password
    page: str
    """A page that runs queries; ``page_text`` must be in it (the app read its data)."""
    page_text: bytes
    ready_path: str
    """A URL that answers 200 without touching the database."""
    opener: tuple[str, str]
    """(file in the app's package, code on the line that opens the connection the
    workers inherit): the warning must name that line."""
    env: dict[str, str] = field(repr=False)

    def opener_line(self) -> str:
        relative, code = self.opener
        path = self.venv.site_packages / relative
        for number, line in enumerate(path.read_text().splitlines(), start=1):
            if line.strip() == code:
                return f"{relative}:{number}"
        raise AssertionError(f"{code!r} not in {path}: another version of the app?")


def _venv(spec: AppSpec) -> AppVenv:
    try:
        return app_venv(spec)
    except InstallFailed as e:
        pytest.skip(f"{spec.name} {spec.version} could not be installed: {e}")


def _in_venv(venv: AppVenv, code: str, env: dict[str, str], cwd: Path) -> None:
    done = subprocess.run(
        [str(venv.python), "-c", code], env={**os.environ, **env}, cwd=cwd,
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.fixture(scope="session")
def ihatemoney(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> RealApp:
    """ihatemoney with a database its own code migrated and seeded (the demo project, in
    its "XXX" no-currency: no exchange rate is ever fetched)."""
    venv = _venv(IHATEMONEY)
    dbname = f"real_ihatemoney_{os.getpid()}"
    pg.create_database(dbname)
    url = database_url(pg, dbname)
    work = tmp_path_factory.mktemp("ihatemoney")
    settings = work / "ihatemoney.cfg"
    settings.write_text(
        Template((HERE / "ihatemoney.cfg").read_text()).substitute(database_uri=url)
    )
    env = {**libpq_env(pg), "IHATEMONEY_SETTINGS_FILE_PATH": str(settings)}
    seed = (
        "from ihatemoney.run import create_app\nfrom ihatemoney.models import Project\n"
        "with create_app().app_context():\n    Project.create_demo_project()\n"
    )
    _in_venv(venv, seed, env, work)
    return RealApp(
        IHATEMONEY, venv, pg, url, page="/demo/", page_text=b"Food shopping",
        ready_path="/healthcheck", env=env,
        opener=("ihatemoney/run.py", "with db.engine.connect() as con:"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def kotti(pg: PostgresServer) -> RealApp:
    """Kotti on an empty database: its first start creates and populates the tables."""
    venv = _venv(KOTTI)
    dbname = f"real_kotti_{os.getpid()}"
    pg.create_database(dbname)
    return RealApp(
        KOTTI, venv, pg, database_url(pg, dbname), page="/",
        page_text=b"Kotti served by the test suite", ready_path="/fanstatic/kotti/base.css",
        env=libpq_env(pg), opener=("kotti/resources.py", "if not engine.table_names():"),
    )  # fmt: skip


@pytest.fixture(params=["ihatemoney", "kotti"])
def real_app(request: pytest.FixtureRequest, pg: PostgresServer) -> RealApp:
    # pg named here too: conftest marks "fast" every test whose fixtures lack it.
    app: RealApp = request.getfixturevalue(request.param)
    return app


@dataclass
class Served:
    """One server (uWSGI master or gunicorn arbiter) of a real app, as the tests see it."""

    master: int
    workers: list[int]
    port: int
    log: Callable[[], str]


Serve = Callable[..., Served]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Starts a real app under uWSGI or gunicorn in one of MODES; stops all at teardown."""
    stops: list[Callable[[], None]] = []

    def start(app: RealApp, mode: str, server: str = "uwsgi") -> Served:
        assert mode in MODES
        log_dir = tmp_path / f"{server}-{len(stops)}"
        log_dir.mkdir()
        if server == "gunicorn":
            return _gunicorn(app, mode, log_dir, stops)
        if app.spec is IHATEMONEY:
            args = [
                "--master", "--processes", str(WORKERS),
                "--module", "ihatemoney.wsgi:application", "--need-app",
            ]  # fmt: skip
            if mode != "without the switch":
                args += ["--import", "flask_uwsgi_dbfix.auto"]
            if mode == "with the switch and fork hooks":
                args += ["--py-call-uwsgi-fork-hooks"]
        else:
            lines = []
            if mode != "without the switch":
                lines.append("import = flask_uwsgi_dbfix.auto")
            if mode == "with the switch and fork hooks":
                lines.append("py-call-uwsgi-fork-hooks = true")
            args = ["--ini-paste", str(_kotti_ini(app, log_dir, lines)), "--need-app"]
        server_ = start_uwsgi(
            args, env=app.env, cwd=log_dir, processes=WORKERS, log_dir=log_dir,
            program=[app.venv.command("uwsgi")], ready_path=app.ready_path,
        )  # fmt: skip
        stops.append(lambda: server_.stop(graceful=False))
        return Served(server_.process.pid, server_.worker_pids(), server_.port, server_.log)

    yield start
    for stop in stops:
        stop()


def _kotti_ini(app: RealApp, where: Path, uwsgi_lines: list[str]) -> Path:
    text = Template((HERE / "kotti.ini").read_text()).substitute(sqlalchemy_url=app.url)
    ini = where / "kotti.ini"
    ini.write_text(text + "".join(f"{line}\n" for line in uwsgi_lines))
    return ini


def _gunicorn(app: RealApp, mode: str, log_dir: Path, stops: list[Callable[[], None]]) -> Served:
    assert app.spec is KOTTI and mode != "with the switch and fork hooks"
    program = [app.venv.command("gunicorn")]
    if mode == "with the switch":
        program.insert(0, app.venv.command("dbfix-run"))
    ini = _kotti_ini(app, log_dir, [])
    server = start_gunicorn(
        f"--paste={ini}",  # gunicorn's documented way to serve a PasteDeploy ini
        ["--preload", "--access-logfile", "-", "--access-logformat", GUNICORN_ACCESS_FORMAT],
        workers=WORKERS, log_dir=log_dir, env=app.env, cwd=log_dir, program=program,
        ready_path=app.ready_path,
    )  # fmt: skip
    stops.append(lambda: server.stop(graceful=False))
    return Served(server.server.pid, server.worker_pids(), server.port, server.log)


def _load(app: RealApp, served: Served) -> PageLoad:
    return load_pages(
        served.port, [app.page], total=REQUESTS, concurrency=CONCURRENCY,
        must_contain=app.page_text, timeout=10, deadline=90,
    )  # fmt: skip


def _report(app: RealApp, served: Served, label: str, result: PageLoad, before: Sharing) -> None:
    """One line per run for `pytest -s`: the numbers the docs and the issue quote."""
    per_worker = sorted(answered(served.log(), app.page).values())
    print(
        f"\n{app.spec.key} {label}: {result.failed} of {result.requests} failed"
        f" {dict(result.failures)}; before the load {len(before.on_masters_socket)} of"
        f" {len(before.workers)} workers held the master's socket; the master keeps"
        f" {len(backends_of(app.pg, served.master))} backend(s); answers per worker"
        f" {per_worker}; load {result.seconds:.1f}s"
    )


def _assert_each_worker_on_its_own(app: RealApp, served: Served, after: Sharing) -> None:
    """Every worker answered the page, holds sockets of its own (no other process holds
    them), on backends no other process uses; none shares a socket with another worker."""
    workers = answered(served.log(), app.page)
    # 400 requests, 8 at a time: each of the 4 workers answered about 100 in every run.
    assert sorted(workers) == sorted(served.workers), (workers, served.workers)
    assert after.shared_between_workers == set()
    assert set(workers) <= set(after.with_own_socket), (workers, after)
    owners: dict[int, int] = {}
    master = backends_on(app.pg, after.master)
    for pid in workers:
        for backend in backends_on(app.pg, after.workers[pid] - after.master):
            assert owners.setdefault(backend, pid) == pid, f"backend {backend} shared"
            assert backend not in master


# -- uWSGI, 4 workers, master, no lazy-apps ------------------------------------------------------


def test_uwsgi_without_the_switch_workers_run_on_the_masters_connection(
    real_app: RealApp, serve: Serve
) -> None:
    """The bug, on the app as it is: the master's start-up connection is in every worker
    (the same socket inode), and the workers' queries go over the master's session (it ran
    queries, or died of the shared TLS stream, while the master sat idle)."""
    served = serve(real_app, "without the switch")
    before = sharing(served.master, served.workers, real_app.pg.port)
    assert before.master, "the master opened no connection at start-up: nothing to test"
    assert before.on_masters_socket == sorted(served.workers), before
    masters_backends = backends_of(real_app.pg, served.master)
    activity = backend_activity(real_app.pg, masters_backends)
    assert activity, "the master's backend is gone before any request"
    result = _load(real_app, served)
    _report(real_app, served, "uWSGI without the switch", result, before)
    # Changed or gone: workers ran queries on the master's session, or broke it.
    assert backend_activity(real_app.pg, masters_backends) != activity
    assert real_app.pg.password not in served.log()


def test_uwsgi_with_the_switch_no_request_fails_and_the_warning_names_the_apps_line(
    real_app: RealApp, serve: Serve
) -> None:
    """The one line (ihatemoney: ``--import flask_uwsgi_dbfix.auto``; Kotti: ``import =
    flask_uwsgi_dbfix.auto`` in its ini): no failed request, the master's session untouched
    by the workers, one warning naming the app's own line, and no password in the log."""
    served = serve(real_app, "with the switch")
    before = sharing(served.master, served.workers, real_app.pg.port)
    masters_backends = backends_of(real_app.pg, served.master)
    activity = backend_activity(real_app.pg, masters_backends)
    assert activity, "the master opened no connection at start-up: nothing to test"
    result = _load(real_app, served)
    _report(real_app, served, "uWSGI with the switch", result, before)
    assert result.failed == 0, result.failures
    assert result.ok == REQUESTS
    # The workers dropped their copies unused: the master's session ran nothing since.
    assert backend_activity(real_app.pg, masters_backends) == activity
    _assert_each_worker_on_its_own(
        real_app, served, sharing(served.master, served.workers, real_app.pg.port)
    )
    log = served.log()
    assert log.count(WARNING) == 1, log
    assert WARNING_TEXT in log
    where = real_app.opener_line()
    assert f"{where}: {WARNING}" in log, log  # the warning's own location: the app's line
    assert f"opened at {real_app.venv.site_packages / where} in " in log, log
    assert real_app.pg.password not in log


def test_uwsgi_with_the_switch_and_fork_hooks_the_master_keeps_no_connection(
    real_app: RealApp, serve: Serve
) -> None:
    """With ``py-call-uwsgi-fork-hooks`` too, the master closes its idle connection before
    forking: no worker holds a socket of the master's, none shares one with another, no
    request fails, and the master keeps no backend."""
    served = serve(real_app, "with the switch and fork hooks")
    before = sharing(served.master, served.workers, real_app.pg.port)
    assert before.master == set() and before.on_masters_socket == [], before
    result = _load(real_app, served)
    masters_backends = backends_of(real_app.pg, served.master)
    _report(real_app, served, "uWSGI, switch + hooks", result, before)
    assert result.failed == 0, result.failures
    assert result.ok == REQUESTS
    after = sharing(served.master, served.workers, real_app.pg.port)
    assert after.master == set() and after.on_masters_socket == [], after
    _assert_each_worker_on_its_own(real_app, served, after)
    assert masters_backends == []
    log = served.log()
    assert WARNING not in log, log  # nothing was inherited: nothing to warn about
    assert real_app.pg.password not in log


# -- gunicorn --preload, 4 workers ------------------------------------------------------------


def test_gunicorn_preload_without_dbfix_run_workers_share_the_arbiters_connection(
    kotti: RealApp, serve: Serve
) -> None:
    served = serve(kotti, "without the switch", server="gunicorn")
    before = sharing(served.master, served.workers, kotti.pg.port)
    assert before.master, "the arbiter opened no connection at start-up: nothing to test"
    assert before.on_masters_socket == sorted(served.workers), before
    masters_backends = backends_of(kotti.pg, served.master)
    activity = backend_activity(kotti.pg, masters_backends)
    result = _load(kotti, served)
    _report(kotti, served, "gunicorn --preload without dbfix-run", result, before)
    assert backend_activity(kotti.pg, masters_backends) != activity


def test_gunicorn_preload_under_dbfix_run(kotti: RealApp, serve: Serve) -> None:
    """``dbfix-run gunicorn --preload --paste kotti.ini``: gunicorn forks through Python, so
    the arbiter closes its idle connection before each fork; no request fails, every
    worker is on backends of its own and the arbiter keeps none."""
    served = serve(kotti, "with the switch", server="gunicorn")
    before = sharing(served.master, served.workers, kotti.pg.port)
    assert before.master == set() and before.on_masters_socket == [], before
    result = _load(kotti, served)
    masters_backends = backends_of(kotti.pg, served.master)
    _report(kotti, served, "gunicorn --preload under dbfix-run", result, before)
    assert result.failed == 0, result.failures
    assert result.ok == REQUESTS
    _assert_each_worker_on_its_own(
        kotti, served, sharing(served.master, served.workers, kotti.pg.port)
    )
    assert masters_backends == []
    assert kotti.pg.password not in served.log()


# -- the check, on the app that is not a Flask app -----------------------------------------------


@pytest.mark.parametrize("switch", [False, True], ids=["without the switch", "with the switch"])
def test_python_m_check_reads_kottis_paste_ini(
    kotti: RealApp, tmp_path: Path, switch: bool
) -> None:
    """``python -m flask_uwsgi_dbfix check --ini kotti.ini`` in the app's own environment:
    it loads the PasteDeploy app the ini serves (``uwsgi --ini-paste``), names the line
    that opened the connection the workers would inherit, and knows the ini's import line."""
    ini = _kotti_ini(kotti, tmp_path, ["import = flask_uwsgi_dbfix.auto"] if switch else [])
    done = subprocess.run(
        [str(kotti.venv.python), "-m", "flask_uwsgi_dbfix", "check", "--ini", str(ini)],
        env={**os.environ, **kotti.env}, cwd=tmp_path, capture_output=True, text=True,
        timeout=120, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    out = " ".join(done.stdout.split())
    assert f"{kotti.opener_line()} in " in out, done.stdout + done.stderr[-3000:]
    if switch:
        assert done.returncode == 0, done.stdout
        assert "NOTE process-wide The process-wide mode is on" in out
    else:
        assert done.returncode == 1, done.stdout
        assert "ERROR prefork-connection" in out and "ERROR fix-disabled" in out
    assert kotti.pg.password not in done.stdout + done.stderr
