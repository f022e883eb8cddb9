"""Make Flask + SQLAlchemy apps safe under uWSGI's pre-forking workers.

Each worker forgets the database connections it inherited from the master
(``engine.dispose(close=False)``) right after the fork, pooled connections are guarded by
pid, and a warning names the code that opened connections before the fork.

Importing the package does nothing to the process: no listener, no fork hook. The fix
switches on for what the user hands it: ``FlaskDBFix(app)`` or ``register(engine)``. The
names below are loaded on first use, so that the ``flask dbfix`` plugin, which every
``flask`` command loads, costs next to nothing.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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

_HOMES = {
    "DBFixConfig": ".config",
    "FlaskDBFix": ".extension",
    "register": ".extension",
    "HeldAcrossForkError": ".held",
    "PreForkConnectionWarning": ".prefork",
}


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(home, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
