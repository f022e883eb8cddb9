"""The extension's wiring and config: logic only, on SQLite files (no fork, no wire)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine
from sqlalchemy.pool import QueuePool

from flask_uwsgi_dbfix import DBFixConfig, FlaskDBFix, forkhooks, register
from flask_uwsgi_dbfix import engines as dbfix_engines
from flask_uwsgi_dbfix.extension import DBFixState
from flask_uwsgi_dbfix.masking import masked_url
from tests.engines import dispose_new_engines  # noqa: F401 - autouse fixture
from tests.fsa_compat import fsa_engines


def make_app(tmp_path: Path, **config: object) -> Flask:
    app = Flask(__name__)
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / 'main.db'}"
    # SQLAlchemy 1.4 gives SQLite files a NullPool (2.x a QueuePool): these tests look at
    # the connections a pool keeps.
    app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"poolclass": QueuePool}
    app.config.update(config)
    return app


def names(app: Flask) -> list[str]:
    return [m.name for m in dbfix_engines.app_engines(app) if m.source == "flask-sqlalchemy"]


def test_defaults_are_set_in_app_config_and_state(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    FlaskDBFix(app)
    assert app.config["DBFIX_ENABLED"] is True
    assert app.config["DBFIX_PREFORK_WARNING"] is True
    assert app.config["DBFIX_PID_GUARD"] is True
    state = app.extensions["dbfix"]
    assert isinstance(state, DBFixState)
    assert state.config == DBFixConfig()


@pytest.mark.parametrize(("raw", "expected"), [("off", False), ("YES", True), (0, False)])
def test_config_accepts_the_usual_boolean_spellings(
    tmp_path: Path, raw: object, expected: bool
) -> None:
    app = make_app(tmp_path, DBFIX_PID_GUARD=raw)
    FlaskDBFix(app)
    assert app.extensions["dbfix"].config.pid_guard is expected


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"DBFIX_PID_GUARD": "maybe"}, "DBFIX_PID_GUARD must be a boolean.*'maybe'"),
        ({"DBFIX_ENABLED": 2}, "DBFIX_ENABLED must be a boolean"),
        ({"DBFIX_PIDGUARD": False}, "unknown .* DBFIX_PIDGUARD; known keys: DBFIX_ENABLED"),
    ],
)
def test_bad_config_fails_at_init_app_with_a_clear_message(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    app = make_app(tmp_path, **config)
    with pytest.raises(ValueError, match=message):
        FlaskDBFix().init_app(app)
    assert "dbfix" not in app.extensions


def test_sqlalchemy_without_dispose_close_fails_at_init_app_with_a_clear_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLAlchemy < 1.4.33: Engine.dispose() has no ``close`` parameter."""
    monkeypatch.setattr(Engine, "dispose", lambda self: None)
    app = make_app(tmp_path)
    with pytest.raises(RuntimeError, match=r"needs SQLAlchemy >= 1\.4\.33 .*Upgrade SQLAlchemy"):
        FlaskDBFix(app)
    assert "dbfix" not in app.extensions
    with pytest.raises(RuntimeError, match=r"needs SQLAlchemy >= 1\.4\.33"):
        register(create_engine(f"sqlite:///{tmp_path / 'plain.db'}"))


def test_init_app_twice_on_one_app_is_an_error(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    dbfix = FlaskDBFix(app)
    with pytest.raises(RuntimeError, match="already initialized"):
        dbfix.init_app(app)


@pytest.mark.parametrize("dbfix_first", [True, False])
def test_every_bind_is_found_whatever_the_init_order(tmp_path: Path, dbfix_first: bool) -> None:
    app = make_app(tmp_path, SQLALCHEMY_BINDS={"reports": f"sqlite:///{tmp_path / 'reports.db'}"})
    db, dbfix = SQLAlchemy(), FlaskDBFix()
    for init in [dbfix.init_app, db.init_app] if dbfix_first else [db.init_app, dbfix.init_app]:
        init(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))  # opened after init: tracked either way
    engines = fsa_engines(db, app)
    assert names(app) == ["default", "reports"]
    opened = dbfix_engines.open_connections(engines[None])
    assert len(opened) == 1
    assert opened[0].origin is not None
    assert opened[0].origin.filename == __file__


def test_connection_opened_between_the_two_init_apps_has_its_origin(tmp_path: Path) -> None:
    app = make_app(tmp_path)
    FlaskDBFix(app)  # before Flask-SQLAlchemy exists on the app
    db = SQLAlchemy(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        line = __import__("inspect").currentframe().f_lineno - 1  # type: ignore[union-attr]
        engine = db.engine
    (opened,) = dbfix_engines.open_connections(engine)
    assert (opened.origin.filename, opened.origin.lineno) == (__file__, line)  # type: ignore[union-attr]


def test_engine_picked_up_at_its_first_connection_is_not_reported_as_in_use(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Tracked from ``first_connect``, the pool already counts the connection being opened:
    that one is not "checked out before it was registered"."""
    app = make_app(tmp_path)
    FlaskDBFix(app)
    db = SQLAlchemy(app)
    with caplog.at_level("WARNING", logger="flask_uwsgi_dbfix"), app.app_context():
        db.session.execute(text("SELECT 1"))
    assert [r.getMessage() for r in caplog.records if r.name == "flask_uwsgi_dbfix"] == []
    assert len(dbfix_engines.open_connections(fsa_engines(db, app)[None])) == 1


def test_several_apps_share_one_extension_without_mixing_engines(tmp_path: Path) -> None:
    dbfix, db = FlaskDBFix(), SQLAlchemy()
    apps = []
    for name in ("one", "two"):
        app = Flask(name)
        app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{tmp_path / name}.db"
        db.init_app(app)
        dbfix.init_app(app)
        apps.append(app)
        fsa_engines(db, app)  # Flask-SQLAlchemy 2.x creates engines on first use
    urls = [
        [str(m.engine.url) for m in dbfix_engines.app_engines(a) if m.source != "register"]
        for a in apps
    ]
    assert urls == [[f"sqlite:///{tmp_path}/one.db"], [f"sqlite:///{tmp_path}/two.db"]]


def test_disabled_extension_manages_nothing(tmp_path: Path) -> None:
    app = make_app(tmp_path, DBFIX_ENABLED=False)
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    with app.app_context():
        assert not dbfix_engines.is_managed(db.engine)
    assert dbfix_engines.app_engines(app) == [
        m for m in dbfix_engines.app_engines(app) if m.source == "register"
    ]


def test_in_memory_sqlite_is_left_alone(tmp_path: Path) -> None:
    """Its connections live in process memory: a fork copies them safely."""
    app = make_app(tmp_path, SQLALCHEMY_DATABASE_URI="sqlite://")
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        assert not dbfix_engines.is_managed(db.engine)
    assert names(app) == []


def test_register_returns_the_engine_and_rejects_other_objects(tmp_path: Path) -> None:
    engine = create_engine(f"sqlite:///{tmp_path / 'plain.db'}")
    assert register(engine, name="plain") is engine
    assert FlaskDBFix.register(engine) is engine
    assert dbfix_engines.is_managed(engine)
    with pytest.raises(TypeError, match="takes a sqlalchemy.engine.Engine, got str"):
        register("sqlite://")  # type: ignore[arg-type]


def test_apps_and_engines_are_not_kept_alive(tmp_path: Path) -> None:
    # Earlier tests' garbage first: an unclosed sqlite3 connection that a GC pass inside
    # this test collects raises a ResourceWarning (Python 3.13) whose traceback, kept by
    # pytest's unraisable-exception hook, holds this test's frames and so its app.
    gc.collect()
    app = make_app(tmp_path)
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    with app.app_context():
        engine_ref = weakref.ref(db.engine)
    app_ref = weakref.ref(app)
    del app, db
    gc.collect()
    assert app_ref() is None
    assert engine_ref() is None


def test_outside_uwsgi_the_hook_is_not_installed_and_nothing_breaks(tmp_path: Path) -> None:
    FlaskDBFix(make_app(tmp_path))
    assert forkhooks.uwsgi_hook_status() == "not under uWSGI"


def test_engine_disposed_by_the_app_stays_tracked(tmp_path: Path) -> None:
    """Whatever an app's own tests do to its engines keeps working, and keeps the guard."""
    app = make_app(tmp_path)
    db = SQLAlchemy(app)
    FlaskDBFix(app)
    with app.app_context():
        db.create_all()
        db.engine.dispose()
        db.session.execute(text("SELECT 1"))
        assert len(dbfix_engines.open_connections(db.engine)) == 1
        db.session.close()
        db.engine.dispose()
        assert dbfix_engines.open_connections(db.engine) == []


def test_masked_url_hides_passwords_in_the_query_string_too() -> None:
    engine = create_engine(
        "postgresql+psycopg2://app:s3cret@db/app?password=hunter2&sslpassword=k3y&sslmode=require"
    )
    shown = masked_url(engine)
    for secret in ("s3cret", "hunter2", "k3y"):
        assert secret not in shown
    assert "sslmode=require" in shown
    assert shown.startswith("postgresql+psycopg2://app:***@db/app?")


def test_adopting_many_engines_walks_the_heap_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connections checked out before register() are found among live objects: one walk
    serves every engine registered after it, not one walk per engine."""
    # QueuePool: SQLAlchemy 1.4 gives a SQLite file a NullPool, which lends nothing out.
    made = [
        create_engine(f"sqlite:///{tmp_path / f'{n}.db'}", poolclass=QueuePool) for n in range(5)
    ]
    held = [engine.connect() for engine in made]
    walks = []
    real = gc.get_objects

    def counting(*args: Any) -> list[Any]:
        walks.append(1)
        return real(*args)

    monkeypatch.setattr(dbfix_engines.gc, "get_objects", counting)
    # Opened before anything recorded them: another test may have switched recording on.
    monkeypatch.setattr(dbfix_engines.stamps, "recorded_records", list)
    try:
        for n, engine in enumerate(made):
            register(engine, name=f"held-{n}")
        assert len(walks) == 1
        for engine in made:
            (opened,) = dbfix_engines.open_connections(engine)
            assert opened.checked_out
    finally:
        for conn in held:
            conn.close()
        for engine in made:
            engine.dispose()


def test_flask_dbfix_on_something_else_says_what_it_takes() -> None:
    """Middleware around the app (CKAN's I18nMiddleware, a WhiteNoise wrapper): a clear
    TypeError naming what was passed and what to pass instead, not an AttributeError."""

    class Middleware:
        def __init__(self, app: Flask) -> None:
            self.app = app

    wrapped = Middleware(Flask(__name__))
    with pytest.raises(TypeError, match="FlaskDBFix takes a Flask app, got Middleware: pass"):
        FlaskDBFix(wrapped)  # type: ignore[arg-type]
    assert "dbfix" not in wrapped.app.extensions
