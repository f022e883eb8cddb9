"""WSGI entry point for uWSGI (``module = example_app.wsgi:app``) and ``flask --app``."""

from example_app import create_app

app = create_app()
