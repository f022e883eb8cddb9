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
- :mod:`~flask_uwsgi_dbfix.check.cli` is the ``flask dbfix`` command group, glue only.

The old module paths ``flask_uwsgi_dbfix.check_output``, ``flask_uwsgi_dbfix.uwsgi_ini`` and
``flask_uwsgi_dbfix.cli`` still import.
"""

from .findings.ini import osafterfork_kills_workers
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
    "osafterfork_kills_workers",
]
