"""An app whose import fails after FlaskDBFix(app): the error must be the app's own."""

from flask import Flask

from flask_uwsgi_dbfix import FlaskDBFix

app = Flask(__name__)
FlaskDBFix(app)
raise RuntimeError("broken_app: SETTINGS_MODULE is not set")
