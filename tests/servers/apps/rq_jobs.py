"""The RQ job: one query with the app's engine. Enqueued by name, so whichever process runs
it imports this module (and the app) itself unless the worker already did."""

from __future__ import annotations

from typing import Any

from tests.servers.apps import web


def probe() -> dict[str, Any]:
    """A database error fails the job."""
    with web.app.app_context():
        try:
            return web.probe() | {"import": web.IMPORT_BACKEND}
        finally:
            web.db.session.remove()
