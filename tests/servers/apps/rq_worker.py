"""An RQ worker class that loads the Flask app in the worker process, as apps do to share
config, models and a warm import: ``rq worker -w tests.servers.apps.rq_worker.AppWorker``.

The app (and the connection its startup work opened) is now in the worker, and every
work-horse RQ forks per job inherits it. Plain ``rq worker`` imports the job's module only
in the work-horse, so nothing is inherited there.
"""

from __future__ import annotations

from typing import Any

from rq import Worker

from tests.servers.apps import web


class AppWorker(Worker):
    def perform_job(self, *args: Any, **kwargs: Any) -> bool:
        with web.app.app_context():  # the work-horse runs every job inside the app
            return bool(super().perform_job(*args, **kwargs))
