"""JSON routes: reads and writes over both tables, plus the two the demo relies on."""

from __future__ import annotations

import os
from typing import Any

from flask import Blueprint, abort, current_app, request
from sqlalchemy import func, select, text, update

from .models import Author, Quote, db

bp = Blueprint("example", __name__)

# Which server process this connection talks to, and whether it is encrypted.
PROBE = text("SELECT pg_backend_pid(), (SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid())")


def worker_id() -> int | None:
    """uWSGI's worker number (1..N), or None outside uWSGI."""
    try:
        import uwsgi
    except ImportError:
        return None
    return int(uwsgi.worker_id())


def _body() -> dict[str, Any]:
    data = request.get_json(silent=True)
    if not isinstance(data, dict):
        abort(400, "expected a JSON object")
    return data


@bp.get("/ping")
def ping() -> dict[str, Any]:
    """Readiness probe. Touches no database, so each worker's first query is a real one."""
    return {"status": "ok", "pid": os.getpid(), "worker": worker_id()}


@bp.get("/worker")
def worker() -> dict[str, Any]:
    """Who served this request and on which database backend: the demo's load target.

    ``startup`` is the backend the app used while it was created, and in which process: a
    worker reporting that backend from another process shares the master's connection.
    """
    backend, ssl = db.session.execute(PROBE).one()
    quotes = db.session.scalar(select(func.count(Quote.id)))
    return {
        "pid": os.getpid(),
        "worker": worker_id(),
        "backend": backend,
        "ssl": ssl,
        "quotes": quotes,
        "startup": current_app.extensions["example_app"],
    }


@bp.get("/authors")
def list_authors() -> dict[str, Any]:
    authors = db.session.scalars(select(Author).order_by(Author.id)).all()
    return {"authors": [a.as_json() for a in authors]}


@bp.post("/authors")
def create_author() -> tuple[dict[str, Any], int]:
    name = str(_body().get("name", "")).strip()
    if not name:
        abort(400, "name is required")
    if db.session.scalar(select(Author.id).where(Author.name == name)) is not None:
        abort(409, f"author {name!r} already exists")
    author = Author(name=name, quotes=[])
    db.session.add(author)
    db.session.commit()
    return author.as_json(), 201


@bp.get("/quotes")
def list_quotes() -> dict[str, Any]:
    query = select(Quote).order_by(Quote.id)
    author_id = request.args.get("author_id", type=int)
    if author_id is not None:
        query = query.where(Quote.author_id == author_id)
    return {"quotes": [q.as_json() for q in db.session.scalars(query)]}


@bp.get("/quotes/random")
def random_quote() -> dict[str, Any]:
    quote = db.session.scalars(select(Quote).order_by(func.random()).limit(1)).first()
    if quote is None:
        abort(404, "no quotes yet")
    return quote.as_json()


@bp.post("/quotes")
def create_quote() -> tuple[dict[str, Any], int]:
    data = _body()
    quote_text = str(data.get("text", "")).strip()
    if not quote_text:
        abort(400, "text is required")
    author_id = data.get("author_id")
    if not isinstance(author_id, int) or isinstance(author_id, bool):
        abort(400, "author_id must be an integer")
    author = db.session.get(Author, author_id)
    if author is None:
        abort(404, "no such author")
    quote = Quote(text=quote_text, author=author)
    db.session.add(quote)
    db.session.commit()
    return quote.as_json(), 201


@bp.post("/quotes/<int:quote_id>/like")
def like_quote(quote_id: int) -> dict[str, Any]:
    # An UPDATE in the database, so concurrent likes from several workers all count.
    done = db.session.execute(
        update(Quote).where(Quote.id == quote_id).values(likes=Quote.likes + 1)
    )
    if done.rowcount == 0:
        abort(404, "no such quote")
    db.session.commit()
    return db.get_or_404(Quote, quote_id).as_json()
