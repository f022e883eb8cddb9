"""Old path of :mod:`flask_uwsgi_dbfix.check.uwsgi_ini`, kept so existing imports work.

The name is bound to that very module, not a copy (``flask_uwsgi_dbfix.uwsgi_ini is
flask_uwsgi_dbfix.check.uwsgi_ini``): what is set on one is seen through the other.
"""

import sys

from .check import uwsgi_ini as _module
from .check.uwsgi_ini import IniError as IniError
from .check.uwsgi_ini import IniOption as IniOption
from .check.uwsgi_ini import ServedApp as ServedApp
from .check.uwsgi_ini import Unresolved as Unresolved
from .check.uwsgi_ini import UwsgiIni as UwsgiIni
from .check.uwsgi_ini import UwsgiSettings as UwsgiSettings
from .check.uwsgi_ini import parse_bool as parse_bool
from .check.uwsgi_ini import parse_int as parse_int
from .check.uwsgi_ini import read_ini as read_ini
from .check.uwsgi_ini import settings_from_ini as settings_from_ini
from .check.uwsgi_ini import split_ini_spec as split_ini_spec

sys.modules[__name__] = _module
