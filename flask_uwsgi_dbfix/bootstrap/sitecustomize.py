"""``dbfix-run`` puts this directory first on ``PYTHONPATH``, so Python runs this file at
start-up in every interpreter the command starts (the server, its re-executions, Python
programs it runs): the process-wide mode is on before any app code is imported.

Then it hands over to the ``sitecustomize`` this one hides, if there is one (a
distribution's, a virtualenv's), as coverage and ddtrace do. An interpreter that cannot
import flask_uwsgi_dbfix (another virtualenv started by the server) is left alone.
"""

import importlib.machinery
import importlib.util
import os
import sys


def _switch_on() -> None:
    try:
        from flask_uwsgi_dbfix.process_wide import SwitchError, requested, switch_on
    except ImportError:
        return
    try:
        wanted = requested(default=False)
    except SwitchError as exc:
        # Raising here would only print "Error in sitecustomize" and go on without the
        # mode; stop before the server can fork, with the reason.
        print(f"flask-uwsgi-dbfix: {exc}", file=sys.stderr, flush=True)
        os._exit(2)
    if wanted:
        switch_on()


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    rest = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", rest)
    if spec is None or spec.loader is None or spec.origin == __file__:
        return
    module = importlib.util.module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    spec.loader.exec_module(module)


_switch_on()
_chain()
