"""A module-level app that queries the database at import, as in the bug report.

``flask --app tests.cli_apps.import_query_app dbfix check`` runs against it in a real
subprocess. Environment: ``DATABASE_URL`` (required); ``IMPORT_QUERY=0`` for a clean app;
``DBFIX_ENABLED=false`` to switch the fix off; ``DBFIX_INIT=0`` for an app that has not
adopted the extension at all (``flask dbfix check`` still exists: an entry point).
"""

from __future__ import annotations

import os

from flask import Flask
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy import text

from flask_uwsgi_dbfix import FlaskDBFix

if os.environ.get("PRINT_AT_IMPORT") == "1":  # apps print banners while they load
    print("import_query_app says hello")

app = Flask(__name__)
app.config["SQLALCHEMY_DATABASE_URI"] = os.environ["DATABASE_URL"]
app.config["SQLALCHEMY_TRACK_MODIFICATIONS"] = False  # Flask-SQLAlchemy 2.x warns if unset
app.config["DBFIX_ENABLED"] = os.environ.get("DBFIX_ENABLED", "true")  # the off switch
db = SQLAlchemy(app)
if os.environ.get("DBFIX_INIT", "1") == "1":
    FlaskDBFix(app)

if os.environ.get("IMPORT_QUERY", "1") == "1":
    with app.app_context():
        SERVER_VERSION = db.session.execute(text("SHOW server_version")).scalar()  # MARK: import
