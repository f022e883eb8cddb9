"""Old path of :mod:`flask_uwsgi_dbfix.check.output`, kept so existing imports work.

The name is bound to that very module, not a copy (``flask_uwsgi_dbfix.check_output is
flask_uwsgi_dbfix.check.output``): what is set on one is seen through the other.
"""

import sys

from .check import output as _module
from .check.output import SCHEMA_VERSION as SCHEMA_VERSION
from .check.output import render_human as render_human
from .check.output import report_to_json as report_to_json

sys.modules[__name__] = _module
