"""An app with a password in every place a URL can carry one, each bind queried at import.

Environment: BINDS, a JSON object bind name -> URL (the first is the default bind).
Logging is configured, so the package's log lines are printed as well as its warning.
"""

from __future__ import annotations

import json
import logging
import os

from flask import Flask, jsonify
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix

logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")

binds: dict[str, str] = json.loads(os.environ["BINDS"])
default, *others = binds
app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = binds[default]
app.config["SQLALCHEMY_BINDS"] = {name: binds[name] for name in others}
db = SQLAlchemy(app)
FlaskDBFix(app)

with app.app_context():
    for engine in db.engines.values():
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))


@app.get("/ping")
def ping() -> object:
    return jsonify(ok=True)
