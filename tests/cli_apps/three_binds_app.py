"""Three binds to one database, pooled 5 + 10 each, and a query at import: the deployment
of the connection-budget finding (``tests/test_budget.py``). ``DATABASE_URL`` required."""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix

app = Flask(__name__)
url = os.environ["DATABASE_URL"]
app.config["SQLALCHEMY_DATABASE_URI"] = url
app.config["SQLALCHEMY_BINDS"] = {"reports": url, "audit": url}
app.config["SQLALCHEMY_ENGINE_OPTIONS"] = {"pool_size": 5, "max_overflow": 10}
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False  # Flask-SQLAlchemy 2.x warns if unset
db = SQLAlchemy(app)
FlaskDBFix(app)
with app.app_context():
    db.session.execute(text("SELECT 1"))
    db.session.commit()
