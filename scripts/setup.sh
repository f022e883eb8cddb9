#!/usr/bin/env bash
# Installs what the tests, demo and benchmarks need on a fresh Debian 12 machine, as root.
# Idempotent: a second run skips apt and only lets pip confirm the editable install.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python || command -v python3)}"

if compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; then
    echo "setup: PostgreSQL server already installed ($(ls -d /usr/lib/postgresql/*/bin | tail -n1))"
else
    echo "setup: installing postgresql-15 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null
fi

echo "setup: pip install -e '.[test]' with $PYTHON"
"$PYTHON" -m pip install -q -e '.[test]'

# Flask-SQLAlchemy's own test suite (in its sdist) is run with our extension added, to prove
# the drop-in breaks nothing (tests/test_dropin_flask_sqlalchemy.py).
FSA_VERSION="$("$PYTHON" -c 'import importlib.metadata as m; print(m.version("flask-sqlalchemy"))')"
if ! compgen -G ".thirdparty/flask_sqlalchemy-${FSA_VERSION}.tar.gz" >/dev/null; then
    echo "setup: downloading the Flask-SQLAlchemy ${FSA_VERSION} sdist (its test suite)"
    "$PYTHON" -m pip download -q --no-deps --no-binary :all: \
        "flask-sqlalchemy==${FSA_VERSION}" -d .thirdparty
fi

echo "setup: done"
