"""The findings of ``flask dbfix check``: small rules, run in the order of :data:`RULES`.

A rule takes the :class:`~flask_uwsgi_dbfix.check.report.CheckReport` (built without its
findings) and returns the findings it makes, usually none or one. :func:`find` runs every
rule and orders the findings errors first, keeping the rules' order within a severity.

To add a finding: write a rule in :mod:`~flask_uwsgi_dbfix.check.findings.app` (about the
app and its connections) or :mod:`~flask_uwsgi_dbfix.check.findings.ini` (about the uWSGI
ini; decorate it with ``@about_the_ini`` to receive the audited ini and be skipped without
one), give its finding a new ``code``, add it to :data:`RULES`, and document the code in
``docs/cli.md``.
"""

from __future__ import annotations

from collections.abc import Callable

from ..report import CheckReport, Finding
from . import app, budget, ini

__all__ = ["RULES", "Rule", "find"]

Rule = Callable[[CheckReport], list[Finding]]

RULES: tuple[Rule, ...] = (
    app.no_engines,
    app.prefork_connections,
    app.checked_out_at_fork,
    app.fix_disabled,
    app.process_wide,
    app.pid_guard_fallback,
    ini.no_uwsgi_ini,
    ini.no_master,
    ini.lazy_apps,
    ini.py_call_osafterfork,
    ini.py_call_uwsgi_fork_hooks,
    ini.pyuwsgi_venv_reload,
    ini.single_worker,
    ini.max_requests,
    ini.enable_threads,
    ini.threads_exceed_pool,
    budget.connection_budget,
    budget.pgbouncer_prepared_statements,
    ini.multiple_interpreters,
    ini.served_app,
    ini.unresolved_values,
    ini.inline_comments,
    ini.misspelt_options,
)
"""Every rule, in the order their findings are listed within a severity."""

_SEVERITY_ORDER: dict[str, int] = {"error": 0, "warning": 1, "note": 2}


def find(report: CheckReport) -> tuple[Finding, ...]:
    """Every rule's findings about ``report``, errors first, then warnings, then notes."""
    found = [finding for rule in RULES for finding in rule(report)]
    return tuple(sorted(found, key=lambda f: _SEVERITY_ORDER[f.severity]))
