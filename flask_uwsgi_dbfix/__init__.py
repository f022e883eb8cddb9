"""Make Flask + SQLAlchemy apps safe under uWSGI's pre-forking workers.

Each worker forgets the database connections it inherited from the master
(``engine.dispose(close=False)``) right after the fork, pooled connections are guarded by
pid, and a warning names the code that opened connections before the fork.
"""

from .config import DBFixConfig
from .extension import FlaskDBFix, register
from .held import HeldAcrossForkError
from .prefork import PreForkConnectionWarning

__all__ = [
    "DBFixConfig",
    "FlaskDBFix",
    "HeldAcrossForkError",
    "PreForkConnectionWarning",
    "register",
]
