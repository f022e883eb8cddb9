#!/usr/bin/env bash
# Second leg of the version matrix: the fork and extension tests under SQLAlchemy 2.1, in a
# throwaway venv (the main environment stays on 2.0, which Flask-SQLAlchemy 3.1 targets).
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"
venv="$(mktemp -d /tmp/dbfix-sa21-XXXXXX)"
trap 'rm -rf "$venv"' EXIT
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install -q -e '.[test]' 'SQLAlchemy>=2.1,<2.2'
"$venv/bin/python" -c 'import sqlalchemy; print("SQLAlchemy", sqlalchemy.__version__)'
"$venv/bin/python" -m pytest -p no:cacheprovider tests/test_uwsgi_fork.py \
    tests/test_fork_inprocess.py tests/test_extension.py tests/test_prefork_warning.py
