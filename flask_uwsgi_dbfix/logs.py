"""The package's logger, which a blanket logging configuration does not silence.

``logging.config.fileConfig()`` and ``dictConfig()`` disable every logger that exists when
they run and that they do not name (``disable_existing_loggers``, on by default). An app
that imports this package and then configures logging would lose the lines an operator
must see: what the master closed before forking, an engine that could not be closed, an
app the extension does not cover. So the blanket disable is undone each time the package
logs; its level and handlers stay the app's (silence it with a level, e.g.
``logging.getLogger("flask_uwsgi_dbfix").setLevel(logging.ERROR)``).
"""

from __future__ import annotations

import logging

__all__ = ["LOGGER_NAME", "logger"]

LOGGER_NAME = "flask_uwsgi_dbfix"


def logger() -> logging.Logger:
    """``flask_uwsgi_dbfix``'s logger, enabled again if a logging config disabled it."""
    log = logging.getLogger(LOGGER_NAME)
    if log.disabled:
        log.disabled = False
    return log
