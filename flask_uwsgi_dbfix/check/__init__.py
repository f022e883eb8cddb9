"""The diagnosis: ``flask dbfix check``, beside the fix's modules in the parent package.

:func:`build_report` inspects the app as loaded in this process and the uWSGI ini that will
serve it, and returns a :class:`CheckReport`; :func:`exit_code` gives its verdict. The
modules, in the order the command uses them:

- :mod:`~flask_uwsgi_dbfix.check.uwsgi_ini` reads a uWSGI ini the way uWSGI does;
- :mod:`~flask_uwsgi_dbfix.check.inspection` looks at the app's engines and the ini and
  builds the report (:func:`build_report`);
- :mod:`~flask_uwsgi_dbfix.check.findings` turns the report into findings: small rules
  run in the order of one list;
- :mod:`~flask_uwsgi_dbfix.check.report` holds the report's dataclasses;
- :mod:`~flask_uwsgi_dbfix.check.output` prints it for people (``render_human``) and as
  JSON (``report_to_json``);

The ``flask dbfix`` command group (:mod:`flask_uwsgi_dbfix.commands`) imports this package
only when a command runs: never in a worker.
"""

from .inspection import build_report
from .report import (
    DEFAULT_INI,
    AppMatch,
    CheckReport,
    EngineReport,
    Finding,
    PreforkConnection,
    Severity,
    UwsgiReport,
    exit_code,
)

__all__ = [
    "DEFAULT_INI",
    "AppMatch",
    "CheckReport",
    "EngineReport",
    "Finding",
    "PreforkConnection",
    "Severity",
    "UwsgiReport",
    "build_report",
    "exit_code",
]
