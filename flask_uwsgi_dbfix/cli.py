"""Old path of :mod:`flask_uwsgi_dbfix.check.cli`, kept so existing imports work.

The name is bound to that very module, not a copy (``flask_uwsgi_dbfix.cli is
flask_uwsgi_dbfix.check.cli``): what is set on one is seen through the other.
"""

import sys

from .check import cli as _module
from .check.cli import BadInput as BadInput
from .check.cli import dbfix_cli as dbfix_cli

sys.modules[__name__] = _module
