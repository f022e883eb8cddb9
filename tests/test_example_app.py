"""example_app's routes against the real SSL PostgreSQL, plus its config and uwsgi.ini."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import event, make_url, text

from example_app import create_app, database_url, db
from example_app.models import SEED
from flask_uwsgi_dbfix.extension import DBFixState

ROOT = Path(__file__).resolve().parent.parent
MadeApps = Callable[..., Flask]


@pytest.fixture
def make_app(fresh_db: Callable[[], str]) -> Iterator[MadeApps]:
    """Builds apps on a fresh database each; closes their pools at teardown."""
    made: list[Flask] = []

    def make(url: str | None = None, **config: object) -> Flask:
        app = create_app({"SQLALCHEMY_DATABASE_URI": url or fresh_db(), **config})
        made.append(app)
        return app

    yield make
    for app in made:
        dispose(app)


def dispose(app: Flask) -> None:
    with app.app_context():
        for engine in db.engines.values():
            engine.dispose()


@pytest.fixture
def client(make_app: MadeApps) -> FlaskClient:
    return make_app().test_client()


def test_create_app_creates_tables_and_seeds_rows_once(
    make_app: MadeApps, fresh_db: Callable[[], str]
) -> None:
    url = fresh_db()
    make_app(url)
    app = make_app(url)  # a restart finds the rows and adds nothing
    authors = app.test_client().get("/authors").get_json()["authors"]
    assert [a["name"] for a in authors] == list(SEED)
    assert [a["quotes"] for a in authors] == [len(q) for q in SEED.values()]


def test_create_app_leaves_a_connection_in_the_pool_as_real_apps_do(make_app: MadeApps) -> None:
    # This is what uWSGI's master would hand to its workers: the demo depends on it.
    app = make_app()
    with app.app_context():
        assert db.engine.pool.checkedin() == 1
    startup = app.extensions["example_app"]
    assert startup["pid"] == os.getpid()
    assert isinstance(startup["backend"], int)


def test_ping_touches_no_database(make_app: MadeApps) -> None:
    app = make_app()
    checkouts: list[object] = []
    with app.app_context():
        event.listen(db.engine, "checkout", lambda *args: checkouts.append(args))
    response = app.test_client().get("/ping")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "pid": os.getpid(), "worker": None}
    assert checkouts == []


def test_worker_reports_pid_backend_and_ssl(make_app: MadeApps) -> None:
    app = make_app()
    body = app.test_client().get("/worker").get_json()
    assert body["pid"] == os.getpid()
    assert body["worker"] is None  # not under uWSGI
    assert body["ssl"] is True
    assert body["quotes"] == sum(len(q) for q in SEED.values())
    # Same process, same pool: the request reuses the startup connection.
    assert body["startup"] == {"pid": os.getpid(), "backend": body["backend"]}


def test_authors_and_quotes_can_be_written_and_read_back(client: FlaskClient) -> None:
    created = client.post("/authors", json={"name": "Barbara Liskov"})
    assert created.status_code == 201
    author = created.get_json()
    assert author["name"] == "Barbara Liskov" and author["quotes"] == 0

    quote = client.post("/quotes", json={"author_id": author["id"], "text": "Substitute."})
    assert quote.status_code == 201
    quote_id = quote.get_json()["id"]

    listed = client.get(f"/quotes?author_id={author['id']}").get_json()["quotes"]
    assert [(q["id"], q["text"], q["likes"]) for q in listed] == [(quote_id, "Substitute.", 0)]
    assert client.post(f"/quotes/{quote_id}/like").get_json()["likes"] == 1
    assert client.post(f"/quotes/{quote_id}/like").get_json()["likes"] == 2

    authors = {a["name"]: a["quotes"] for a in client.get("/authors").get_json()["authors"]}
    assert authors["Barbara Liskov"] == 1
    assert client.get("/quotes/random").get_json()["author"]["name"] in authors


@pytest.mark.parametrize(
    ("method", "path", "payload", "status", "error"),
    [
        ("post", "/authors", None, 400, "expected a JSON object"),
        ("post", "/authors", {"name": "  "}, 400, "name is required"),
        ("post", "/authors", {"name": "Tim Peters"}, 409, "author 'Tim Peters' already exists"),
        ("post", "/quotes", {"author_id": 1}, 400, "text is required"),
        ("post", "/quotes", {"author_id": "1", "text": "x"}, 400, "author_id must be an integer"),
        ("post", "/quotes", {"author_id": 999, "text": "x"}, 404, "no such author"),
        ("post", "/quotes/999/like", None, 404, "no such quote"),
    ],
)
def test_bad_requests_get_json_errors(
    client: FlaskClient,
    method: str,
    path: str,
    payload: dict[str, object] | None,
    status: int,
    error: str,
) -> None:
    response = getattr(client, method)(path, json=payload)
    assert response.status_code == status
    assert response.get_json() == {"error": error}


def test_a_database_error_is_a_500_with_the_first_line_of_the_exception(
    make_app: MadeApps,
) -> None:
    # The demo's load generator groups failures by exactly this field.
    app = make_app()
    with app.app_context():
        db.session.execute(text("DROP TABLE quote"))
        db.session.commit()
    response = app.test_client().get("/quotes")
    assert response.status_code == 500
    error = response.get_json()["error"]
    assert error == '(psycopg2.errors.UndefinedTable) relation "quote" does not exist'


@pytest.mark.parametrize(("value", "enabled"), [("0", False), ("off", False), ("1", True)])
def test_dbfix_enabled_comes_from_the_environment(
    make_app: MadeApps, monkeypatch: pytest.MonkeyPatch, value: str, enabled: bool
) -> None:
    monkeypatch.setenv("DBFIX_ENABLED", value)
    monkeypatch.setenv("DBFIX_PG_BINDIR", "/nowhere")  # not an extension key: not copied
    state = make_app().extensions["dbfix"]
    assert isinstance(state, DBFixState)
    assert state.config.enabled is enabled


def test_wsgi_module_builds_the_app_from_database_url(
    fresh_db: Callable[[], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DATABASE_URL", fresh_db())
    monkeypatch.delitem(sys.modules, "example_app.wsgi", raising=False)
    wsgi = importlib.import_module("example_app.wsgi")
    try:
        assert wsgi.app.test_client().get("/worker").get_json()["ssl"] is True
    finally:
        dispose(wsgi.app)
        sys.modules.pop("example_app.wsgi", None)


def test_database_url_adds_sslmode_require_only_when_absent() -> None:
    added = make_url(database_url("postgresql://u:secret@db.example/app"))
    assert added.query == {"sslmode": "require"}
    assert added.password == "secret"
    kept = make_url(database_url("postgresql+psycopg2://u@h/app?sslmode=verify-full"))
    assert kept.query == {"sslmode": "verify-full"}
    assert database_url("sqlite:///x.db") == "sqlite:///x.db"


def test_database_url_unset_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(RuntimeError, match="DATABASE_URL is not set"):
        database_url()


def test_uwsgi_ini_explains_every_option() -> None:
    """Each option line sits under a comment, and the config is the pre-forking kind."""
    lines = (ROOT / "uwsgi.ini").read_text().splitlines()
    options = {}
    in_block = False
    for number, line in enumerate(lines):
        if not line or line.startswith((";", "#", "[")):
            continue
        key, _, value = (part.strip() for part in line.partition("="))
        options.setdefault(key, value)
        # A line inside an if-... block is explained by the comment above the block.
        assert lines[number - 1].startswith(";") or in_block, line
        in_block = key.startswith("if-") or (in_block and not key.startswith("end"))
    assert options["master"] == "true"
    assert options["processes"] == "4"
    assert options["module"] == "example_app.wsgi:app"
    assert options["die-on-term"] == options["need-app"] == "true"
    assert options["http-socket"].startswith("127.0.0.1:")
    assert int(options["max-requests"]) > 0
    assert "lazy-apps" not in options and "lazy" not in options


def test_flask_dbfix_check_passes_example_app_with_its_uwsgi_ini(
    fresh_db: Callable[[], str],
) -> None:
    """The real `flask` command, as a user runs it before deploying, with the README's
    --strict gate: exit 0. The seeding connection is a note: the ini's
    py-call-uwsgi-fork-hooks lets the master close it before forking."""
    flask = Path(sys.executable).parent / "flask"
    url = fresh_db()
    env = {k: v for k, v in os.environ.items() if k != "UWSGI_BINARY_PATH"}  # the ini's own
    env |= {"DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    command = [str(flask), "--app", "example_app.wsgi", "dbfix", "check", "--ini", "uwsgi.ini"]

    def check(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*command, *extra], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )

    result = check("--strict")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "(same: example_app.wsgi:app is this app)" in " ".join(result.stdout.split())
    assert "NOTE     prefork-connection" in result.stdout
    assert "The master closes it before forking" in " ".join(result.stdout.split())
    assert "example_app/__init__.py:" in result.stdout
    password = make_url(url).password
    assert password and password not in result.stdout + result.stderr
