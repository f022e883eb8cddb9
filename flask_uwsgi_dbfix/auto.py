"""Import this module to switch on the process-wide mode: every SQLAlchemy engine this
process makes is kept fork-safe, with no change to the app's code.

Import it before the app, in the process that loads it::

    # uWSGI ini
    import = flask_uwsgi_dbfix.auto

    # gunicorn.conf.py (with --preload), celeryconfig / a Celery app module, any program
    import flask_uwsgi_dbfix.auto

or start the server under ``dbfix-run`` (:mod:`flask_uwsgi_dbfix.run`), which needs no
file at all. ``FLASK_UWSGI_DBFIX=off`` in the environment keeps the mode off; a value that
is neither on nor off stops the process here, with a one-line message on stderr and exit
status 2, before any server forks.
"""

from __future__ import annotations

import sys

from .process_wide import SwitchError, environ_now, requested, switch_on


def _switch_on_unless_off() -> None:
    try:
        wanted = requested(environ_now())
    except SwitchError as exc:
        print(f"flask-uwsgi-dbfix: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if wanted:
        switch_on()


_switch_on_unless_off()
