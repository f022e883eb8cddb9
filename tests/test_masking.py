"""No secret gets through the masking, in any form a URL or DSN takes, in any output.

A seeded random search (deterministic, bounded): secrets of awkward characters (a raw
``@`` included, which SQLAlchemy accepts in a URL's password) put into every URL, query,
libpq DSN and ini form, then through the check's human and JSON output, the warning text
and ``masked_url``. Pure text and engine objects: nothing connects.
"""

from __future__ import annotations

import json
import random
import string
import zlib
from pathlib import Path
from urllib.parse import quote

import pytest
from flask import Flask
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from flask_uwsgi_dbfix import register
from flask_uwsgi_dbfix.check import build_report
from flask_uwsgi_dbfix.check.output import render_human, report_to_json
from flask_uwsgi_dbfix.engines import OpenedConnection
from flask_uwsgi_dbfix.masking import mask_passwords, masked_url
from flask_uwsgi_dbfix.prefork import InheritedConnections, format_uncovered, format_warning

ROUNDS = 300
# What a password may hold raw in a URL SQLAlchemy accepts (":" and "@" included); "/",
# "?", "#" and space must be percent-encoded there, as in any URL.
RAW_SAFE = string.ascii_letters + string.digits + "@:!$&'()*+,;=-._~%"


def secrets(seed: int) -> list[str]:
    """Secrets with a marker no other text here contains, so a leak is unambiguous."""
    rng = random.Random(seed)
    found = []
    for _ in range(ROUNDS):
        body = "".join(rng.choice(RAW_SAFE) for _ in range(rng.randint(4, 24)))
        found.append("Zq" + body.replace("%", "%25").replace("&", "Q"))
    return found


def leaked(secret: str, text: str) -> bool:
    """Any 6-character run of the secret (after its marker) in the text."""
    core = secret[2:]
    runs = {core[i : i + 6] for i in range(max(1, len(core) - 5))}
    return any(len(run) >= 6 and run in text for run in runs) or secret in text


@pytest.mark.parametrize(
    "form",
    [
        "postgresql://app:{raw}@db.internal:5432/app",
        "postgresql+psycopg2://app:{raw}@127.0.0.1/app?sslmode=require",
        "mysql://root:{quoted}@localhost/db",
        "postgresql://app@h/db?password={quoted}&sslmode=require",
        "postgresql://h/db?sslmode=verify-full&sslpassword={quoted}",
        "sqlite+pysqlcipher://:{quoted}@/file.db",
        "sqlite+pysqlcipher:///file.db?key={quoted}",
        "host=db user=app password={bare} dbname=app",
        "host=db user=app password='{quoted_dsn}' dbname=app",
        "env = DATABASE_URL=postgresql://app:{raw}@db/app",
        "env = PGDSN=host=db password={bare}",
        "mount = /app=wsgi.py?token={quoted}",
        "redis://:{raw}@127.0.0.1:6379/0",
    ],
)
def test_no_secret_survives_mask_passwords(form: str) -> None:
    for secret in secrets(zlib.crc32(form.encode())):
        text = form.format(
            raw=secret,
            quoted=quote(secret, safe=""),
            bare=secret.replace("'", "Q").replace(" ", "Q"),
            quoted_dsn=secret.replace("\\", "\\\\").replace("'", "\\'"),
        )
        shown = mask_passwords(text)
        assert not leaked(secret, shown), (text, shown)
        assert mask_passwords(shown) == shown  # masking twice changes nothing


def test_masking_keeps_what_is_not_a_secret() -> None:
    text = (
        "postgresql://app:pw@db.internal:5432/app?sslmode=verify-full"
        "&sslrootcert=/etc/ca.crt&sslkey=/etc/client.key"
    )
    assert mask_passwords(text) == (
        "postgresql://app:***@db.internal:5432/app?sslmode=verify-full"
        "&sslrootcert=/etc/ca.crt&sslkey=/etc/client.key"
    )
    assert mask_passwords("see https://example.org/a:b and mail me@example.org") == (
        "see https://example.org/a:b and mail me@example.org"
    )


def engines_for(secret: str) -> list[Engine]:
    quoted = quote(secret, safe="")
    return [
        create_engine(f"postgresql+psycopg2://app:{secret}@127.0.0.1:5/app"),
        create_engine(f"postgresql+psycopg2://app:{quoted}@127.0.0.1:5/app"),
        create_engine(f"postgresql+psycopg2://app@127.0.0.1:5/app?password={quoted}"),
        create_engine(f"postgresql+psycopg2://app@127.0.0.1:5/app?sslpassword={quoted}"),
    ]


def test_no_secret_in_any_output_of_an_engine(tmp_path: Path) -> None:
    """masked_url, the check's human and JSON reports, and both warnings."""
    for secret in secrets(20)[:40]:
        made = engines_for(secret)
        try:
            app = Flask(__name__)
            for n, engine in enumerate(made):
                register(engine, name=f"e{n}")
            with app.app_context():
                report = build_report(app, default_ini=str(tmp_path / "none.ini"))
            found = [InheritedConnections(f"e{n}", masked_url(e), ()) for n, e in enumerate(made)]
            with_connection = [
                InheritedConnections(f.name, f.url, (OpenedConnection(1, None, False),))
                for f in found
            ]
            outputs = [
                *(masked_url(e) for e in made),
                render_human(report),
                json.dumps(report_to_json(report)),
                format_warning(with_connection),
                format_uncovered(with_connection),
            ]
            for shown in outputs:
                assert not leaked(secret, shown), (secret, shown)
        finally:
            for engine in made:
                engine.dispose()
