"""Bad input and faults: a clear message and a non-zero exit, no traceback from this
package, and never a password, wherever a URL carries one."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg2.extensions
import pytest
from flask import Flask
from psycopg2 import sql
from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url

from flask_uwsgi_dbfix import FlaskDBFix, PreForkConnectionWarning, register
from harness.postgres import PostgresServer
from harness.process import free_port, venv_command
from harness.uwsgi import app_args, run_uwsgi_to_exit, running_uwsgi
from tests.test_fork_inprocess import in_child

from .conftest import FIX, ROOT, WARNING_NAME, app_env

PACKAGE_FRAME = re.compile(r'File "[^"]*flask_uwsgi_dbfix[/\\]')


def uwsgi_app_args(module: str) -> list[str]:
    return app_args(module, processes=2, root=ROOT)


def flask_cli(module: str, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [venv_command("flask"), "--app", module, *args],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# -- the database unreachable, an app that does not import --------------------------------


@FIX
def test_database_unreachable_the_error_is_the_apps_and_only_the_apps(
    pg: PostgresServer, tmp_path: Path, fix: bool
) -> None:
    """The master exits with the app's own error: one traceback, the app's, ending in the
    driver's error; no message or log line of this package; no password. (No worker is
    ever forked, so there is no bug to show without the fix: both runs print the same.)"""
    log = unreachable_database_log(pg, tmp_path, fix)
    assert re.search(r"sqlalchemy\.exc\.OperationalError: \(psycopg2?\.OperationalError\) ", log)
    assert "flask-uwsgi-dbfix" not in log  # no message, warning or log line of ours
    ours = [line for line in log.splitlines() if "flask_uwsgi_dbfix" in line]
    # At most the pid guard's pass-through frame: it wraps the pool's hand-out of a record,
    # so the app's own connection error passes through it; never a raise of ours.
    assert all(line.strip().endswith("in guarded_do_get") for line in ours), ours
    frames = re.findall(r'File "([^"]+)", line \d+, in (\w+)', log)
    assert "flask_uwsgi_dbfix" not in frames[-1][0]


def unreachable_database_log(pg: PostgresServer, tmp_path: Path, fix: bool) -> str:
    closed_port = free_port()
    url = pg.url().replace(f":{pg.port}/", f":{closed_port}/")
    status, log = run_uwsgi_to_exit(
        uwsgi_app_args("tests.servers.apps.web:app"),
        log_path=tmp_path / "uwsgi.log",
        env={**app_env(pg, fix), "DATABASE_URL": url},
        cwd=ROOT,
    )
    assert status != 0
    assert re.search(rf"port {closed_port} failed: Connection refused", log), log[-2000:]
    assert "no app loaded. GAME OVER" in log
    assert "spawned uWSGI worker" not in log
    assert pg.password not in log
    return log


@FIX
def test_app_that_fails_to_import(pg: PostgresServer, tmp_path: Path, fix: bool) -> None:
    """Under uWSGI and under ``flask dbfix check``: the app's error, the app's traceback."""
    status, log = run_uwsgi_to_exit(
        uwsgi_app_args("tests.servers.apps.broken_app:app"),
        log_path=tmp_path / "uwsgi.log",
        env=app_env(pg, fix),
        cwd=ROOT,
    )
    assert status != 0
    assert "RuntimeError: broken_app: SETTINGS_MODULE is not set" in log
    assert not PACKAGE_FRAME.search(log), log
    done = flask_cli("tests.servers.apps.broken_app", "dbfix", "check", env=app_env(pg, fix))
    assert done.returncode != 0, done  # Flask's own handling of an app that fails to import
    assert "RuntimeError: broken_app: SETTINGS_MODULE is not set" in done.stderr
    assert not PACKAGE_FRAME.search(done.stderr + done.stdout)


# -- bad configuration, misuse ------------------------------------------------------------


BAD_VALUES = [
    ("WEB_DBFIX_PID_GUARD", "maybe", "DBFIX_PID_GUARD must be a boolean"),
    ("WEB_DBFIX_ENABLED", "2", "DBFIX_ENABLED must be a boolean"),
    ("WEB_DBFIX_PREFORK_WARNING", "[]", "DBFIX_PREFORK_WARNING must be a boolean"),
    ("WEB_DBFIX_PIDGUARD", "false", "unknown flask-uwsgi-dbfix config key(s) DBFIX_PIDGUARD"),
]


@pytest.mark.parametrize(("variable", "value", "message"), BAD_VALUES)
def test_bad_dbfix_values_from_the_environment_stop_the_app_with_a_clear_message(
    pg: PostgresServer, variable: str, value: str, message: str
) -> None:
    """Config read by ``app.config.from_prefixed_env``: init_app raises a ConfigError (a
    ValueError) that names the key and the accepted values, and the app does not start (an
    off switch that silently does nothing would be worse). The check stops with exit status
    2 (the app did not load: nothing was checked) and one line that says what to change,
    no traceback: the setting is the user's input, not a bug in the app."""
    done = flask_cli(
        "tests.servers.apps.web", "dbfix", "check", env={**app_env(pg, True), variable: value}
    )
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("Error: the app did not load: "), line
    assert message in line
    assert pg.password not in done.stderr + done.stdout


def test_bad_dbfix_value_under_uwsgi_need_app(pg: PostgresServer, tmp_path: Path) -> None:
    status, log = run_uwsgi_to_exit(
        uwsgi_app_args("tests.servers.apps.web:app"),
        log_path=tmp_path / "uwsgi.log",
        env={**app_env(pg, True), "WEB_DBFIX_PID_GUARD": "maybe"},
        cwd=ROOT,
    )
    assert status != 0
    assert "ConfigError: DBFIX_PID_GUARD must be a boolean" in log
    assert "spawned uWSGI worker" not in log


def test_flaskdbfix_twice_on_one_app_says_so_and_keeps_the_first(tmp_path: Path) -> None:
    app = Flask(__name__)
    FlaskDBFix(app)
    state = app.extensions["dbfix"]
    with pytest.raises(RuntimeError, match="already initialized on this app; call init_app"):
        FlaskDBFix(app)
    assert app.extensions["dbfix"] is state


@pytest.mark.parametrize(
    "thing", ["a URL string", "a Connection", "Flask-SQLAlchemy's db", "an AsyncEngine"]
)
def test_register_of_something_that_is_not_an_engine(pg: PostgresServer, thing: str) -> None:
    from flask_sqlalchemy import SQLAlchemy

    url = pg.url()
    with contextlib.ExitStack() as stack:
        engine = create_engine(url)
        stack.callback(engine.dispose)
        objects: dict[str, Any] = {
            "a URL string": url,
            "Flask-SQLAlchemy's db": SQLAlchemy(),
        }
        if thing == "a Connection":
            objects[thing] = stack.enter_context(engine.connect())
        if thing == "an AsyncEngine":
            # greenlet (sqlalchemy[asyncio]) is not in the locked test environment.
            asyncio = pytest.importorskip("sqlalchemy.ext.asyncio", exc_type=ImportError)
            objects[thing] = asyncio.create_async_engine(pg.url(driver="postgresql+psycopg"))
        with pytest.raises(TypeError) as raised:
            register(objects[thing])
    message = str(raised.value)
    assert message.startswith("register() takes a sqlalchemy.engine.Engine, got ")
    assert pg.password not in message
    if thing == "an AsyncEngine":
        assert "got AsyncEngine (use its .sync_engine)" in message
        assert register(objects[thing].sync_engine) is objects[thing].sync_engine


def test_register_of_an_object_with_a_sync_engine_points_to_it() -> None:
    """What an AsyncEngine (or AsyncSession's bind) looks like to register(), without greenlet."""

    class AsyncEngineLike:
        sync_engine = object()

    with pytest.raises(TypeError, match=r"got AsyncEngineLike \(use its \.sync_engine\)"):
        register(AsyncEngineLike())  # type: ignore[arg-type]


# -- passwords --------------------------------------------------------------------------

ODD_PASSWORD = "pw@Zq81:neverprint/?&=%#"
"""Needs percent-encoding in a URL; its letters survive any encoding, so searching for them
finds it however it was printed."""
SSL_KEY_PASSWORD = "sslpwXk42keysecret"
NEVER = ("Zq81", "neverprint", "Xk42", "keysecret")


@pytest.fixture(scope="module")
def odd_role(pg: PostgresServer) -> Iterator[str]:
    """A role whose password needs percent-encoding in a URL."""
    with contextlib.closing(pg.admin_connect()) as conn, conn.cursor() as cur:
        verifier = psycopg2.extensions.encrypt_password(
            ODD_PASSWORD, "odd_user", conn, "scram-sha-256"
        )
        cur.execute(sql.SQL("CREATE ROLE odd_user LOGIN PASSWORD {}").format(sql.Literal(verifier)))
    yield "odd_user"


def password_urls(pg: PostgresServer, role: str) -> dict[str, str]:
    """One URL per place a password can be: bind name -> URL (all reach the real server)."""
    base = make_url(pg.url())
    encoded = quote(ODD_PASSWORD, safe="")
    plain = base.render_as_string(hide_password=False)
    no_password = URL.create(
        base.drivername, role, None, base.host, base.port, base.database, base.query
    ).render_as_string(hide_password=False)
    return {
        "userinfo": plain,
        "encoded": no_password.replace(f"{role}@", f"{role}:{encoded}@", 1),
        "query": no_password + f"&password={encoded}",
        "sslpassword": plain + f"&sslpassword={SSL_KEY_PASSWORD}",
    }


def assert_no_secret(text: str, pg: PostgresServer) -> None:
    for secret in (*NEVER, pg.password):
        assert secret not in text, f"{secret!r} printed"


def test_passwords_every_place_under_uwsgi_the_warning_and_the_log(
    pg: PostgresServer, odd_role: str, tmp_path: Path
) -> None:
    binds = password_urls(pg, odd_role)
    args = uwsgi_app_args("tests.servers.apps.secrets_app:app")
    with running_uwsgi(
        args, env={"BINDS": json.dumps(binds)}, cwd=ROOT, processes=2, log_dir=tmp_path
    ) as server:
        log = server.log()
    assert log.count(WARNING_NAME) == 1, log
    for name in binds:  # every engine is named in the warning, its password masked
        assert re.search(rf"engine '{'default' if name == 'userinfo' else name}' \(", log), name
    assert "flask_uwsgi_dbfix WARNING" in log  # the log line as well as the warning
    assert "password=***" in log and "sslpassword=***" in log and ":***@" in log
    assert_no_secret(log, pg)


def test_passwords_every_place_in_the_check(pg: PostgresServer, odd_role: str) -> None:
    env = {"BINDS": json.dumps(password_urls(pg, odd_role))}
    human = flask_cli("tests.servers.apps.secrets_app", "dbfix", "check", env=env)
    as_json = flask_cli("tests.servers.apps.secrets_app", "dbfix", "check", "--json", env=env)
    for done in (human, as_json):
        assert done.returncode in (0, 1), done.stderr
        assert_no_secret(done.stdout + done.stderr, pg)
    urls = [e["url"] for e in json.loads(as_json.stdout)["engines"]]
    assert len(urls) == 4 and all("***" in u for u in urls), urls


def test_passwords_every_place_in_the_warning_about_connections_held_at_a_fork(
    pg: PostgresServer, odd_role: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Engines registered while they hold a connection, then a fork: the parent cannot
    close those before forking and warns (once) naming each engine by its masked URL."""
    engines = {name: create_engine(url) for name, url in password_urls(pg, odd_role).items()}
    with contextlib.ExitStack() as stack:
        for name, engine in engines.items():
            stack.callback(engine.dispose)
            conn = stack.enter_context(engine.connect())
            conn.execute(text("SELECT 1"))
            register(engine, name=name)
        with caplog.at_level(logging.WARNING), pytest.warns(PreForkConnectionWarning) as caught:
            in_child(dict)
    shown = "\n".join(str(w.message) for w in caught) + caplog.text
    for name in engines:
        assert f"engine '{name}' (" in shown, shown
    assert_no_secret(shown, pg)
