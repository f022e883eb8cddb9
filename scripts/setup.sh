#!/usr/bin/env bash
# Installs what the tests, demo and benchmarks need on a fresh Debian 12 machine, as root:
# PostgreSQL, Redis, PgBouncer and MariaDB from Debian, then the locked Python environment in
# ./.venv (uv.lock).
# Idempotent: a second run skips apt and lets uv confirm that .venv matches the lock.
#
# PYTHON picks the interpreter of .venv (default: python3 on PATH). Nothing else from the
# machine's Python is used: .venv holds exactly the versions in uv.lock.
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
UV_VERSION="0.13.9"

need_apt=()
compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null || need_apt+=(postgresql-15)
command -v redis-server >/dev/null || need_apt+=(redis-server)
[ -x /usr/sbin/pgbouncer ] || need_apt+=(pgbouncer)
[ -x /usr/sbin/mariadbd ] || need_apt+=(mariadb-server)
if [ ${#need_apt[@]} -gt 0 ]; then
    echo "setup: installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
    # Debian starts the services it installs; the tests start their own servers.
    for service in postgresql redis-server pgbouncer mariadb; do
        command -v systemctl >/dev/null && systemctl stop "$service" 2>/dev/null || true
    done
else
    echo "setup: PostgreSQL, Redis, PgBouncer and MariaDB servers already installed"
fi

# uv makes .venv from uv.lock; it runs from its own venv so the machine's Python is untouched.
UV_HOME="${XDG_CACHE_HOME:-$HOME/.cache}/flask-uwsgi-dbfix/uv-$UV_VERSION"
if [ ! -x "$UV_HOME/bin/uv" ]; then
    echo "setup: installing uv $UV_VERSION into $UV_HOME"
    "$PYTHON" -m venv "$UV_HOME"
    "$UV_HOME/bin/python" -m pip install -q "uv==$UV_VERSION"
fi
export UV_PYTHON_DOWNLOADS=never
echo "setup: uv sync --locked (.venv with $("$PYTHON" --version))"
# Every extra and every dependency group (test, docs, bench, dev): what the suite, the docs,
# the benchmarks and the matrix need.
"$UV_HOME/bin/uv" sync -q --locked --all-extras --all-groups --python "$PYTHON"

# Flask-SQLAlchemy's own test suite (in its sdist) is run with our extension added, to prove
# the drop-in breaks nothing (tests/test_dropin_flask_sqlalchemy.py). The version is the
# locked one; the sdist is checked against the hash in uv.lock.
.venv/bin/python scripts/fetch_sdist.py flask-sqlalchemy .thirdparty
.venv/bin/python scripts/fetch_sdist.py sqlalchemy .thirdparty
echo "setup: done; run tests with .venv/bin/python -m pytest"
