"""gunicorn ``--preload -w 4``: the arbiter loads the app (and its connection), then forks."""

from __future__ import annotations

import pytest

from harness.load import run_load

from .conftest import FIX, KEEP_MASTER_CONNECTIONS, WARNING_NAME, StartGunicorn
from .evidence import gather

WORKER_KINDS = {
    "sync": ("--worker-class", "sync"),
    "gthread": ("--worker-class", "gthread", "--threads", "4"),
}


@FIX
@pytest.mark.parametrize("kind", list(WORKER_KINDS))
def test_gunicorn_preload_workers_each_get_their_own_backend(
    gunicorn: StartGunicorn, fix: bool, kind: str
) -> None:
    server = gunicorn(fix=fix, args=WORKER_KINDS[kind])
    result = run_load(server.base_url, "/query", total=300, concurrency=12, deadline=90)
    found = gather(result.ok + result.errors, result.ok[0]["import"] if result.ok else None)
    print(f"\ngunicorn {kind} fix={fix}: {result.failed} of {result.requests} failed; "
          f"{found.summary()}")  # fmt: skip
    assert result.transport_failures == 0, result.failures
    if not fix:
        assert found.bug_shown, found.summary()
        return
    assert result.failed == 0, result.failures
    assert found.isolated, found.summary()
    assert len(found.pids) == 4


@pytest.mark.parametrize("keep", [False, True], ids=["master-closes", "master-keeps"])
def test_gunicorn_warns_once_per_startup_about_what_workers_inherit(
    gunicorn: StartGunicorn, keep: bool
) -> None:
    """The arbiter closes its idle connections before forking (nothing inherited, no
    warning); with DBFIX_CLOSE_BEFORE_FORK off the workers inherit them: one warning."""
    server = gunicorn(
        fix=True, args=WORKER_KINDS["sync"], env=KEEP_MASTER_CONNECTIONS if keep else None
    )
    result = run_load(server.base_url, "/query", total=40, concurrency=8, deadline=60)
    assert result.failed == 0, result.failures
    assert server.log().count(WARNING_NAME) == (1 if keep else 0), server.log()
