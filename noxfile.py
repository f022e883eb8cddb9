"""The version matrix: one nox session per leg, each in its own uv-made venv.

    .venv/bin/nox -l                 # list the legs
    .venv/bin/nox -s "fork(3.12-sa2.1-psycopg)"   # one leg
    .venv/bin/nox                    # every leg (what .ci/run does), then the table

Locked legs install exactly what ``uv.lock`` holds (``uv sync --locked``), with only the
leg's SQLAlchemy line pinned on top, to a version that is also in the lock. ``newest``
ignores the lock: it is what ``pip install flask-uwsgi-dbfix`` gives a user today.
``legacy`` installs ``constraints/legacy.txt``. Each leg writes its versions and test
counts to ``.matrix/``; ``scripts/matrix_report.py`` prints the table and checks README.md.

The fork legs do not cover the whole cross product of Python x SQLAlchemy x driver: with
the locked suite, the wheel leg and ``newest`` (Python 3.13, SQLAlchemy 2.1, psycopg2: no
fork leg repeats it) they cover every pair of those (pairwise), which is what keeps
``.ci/run`` under 15 minutes on a 2-core machine. SQLAlchemy 2.1 needs Python 3.11 or newer.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from pathlib import Path

import nox

ROOT = Path(__file__).resolve().parent
MATRIX_DIR = ROOT / ".matrix"
PYENV = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"

nox.options.default_venv_backend = "uv"
nox.options.error_on_missing_interpreters = True
nox.options.reuse_existing_virtualenvs = False

# The interpreters installed under pyenv are the matrix's Pythons; nothing is downloaded.
for _bin in sorted(glob.glob(str(PYENV / "3.1[0-9]*" / "bin"))):
    os.environ["PATH"] = _bin + os.pathsep + os.environ["PATH"]
os.environ["UV_PYTHON_DOWNLOADS"] = "never"

# What every leg runs: the real-uWSGI fork tests and the extension's tests.
FORK_TESTS = [
    "tests/test_uwsgi_fork.py",
    "tests/test_fork_inprocess.py",
    "tests/test_forkwatch.py",
    "tests/test_extension.py",
    "tests/test_prefork_warning.py",
    "tests/test_inert.py",
    # The process-wide mode's fresh-interpreter fork probe (the whole file, with its controls,
    # uWSGI, gunicorn and the check, runs in the locked leg; CI's time is the limit).
    "tests/test_process_wide.py::test_every_engine_of_an_app_that_never_asked_is_fork_safe",
]
# The versions of these lines in uv.lock (SQLAlchemy 2.0 for Python 3.10 and for the 2.0 legs).
LOCKED_SQLALCHEMY = {"2.0": "2.0.58", "2.1": "2.1.9"}
DRIVERS = {"psycopg2": "postgresql+psycopg2", "psycopg": "postgresql+psycopg"}

# (python, sqlalchemy, driver): with the locked full-suite leg that .ci/run runs first
# (3.11, SQLAlchemy 2.1, psycopg2) and the wheel leg (3.11, SQLAlchemy 2.0, psycopg), every
# pair of the three dimensions appears at least once.
WHEEL_LEG = ("3.11", "2.0", "psycopg")
FORK_LEGS = [
    ("3.10", "2.0", "psycopg2"),
    ("3.10", "2.0", "psycopg"),
    ("3.12", "2.0", "psycopg2"),
    ("3.12", "2.1", "psycopg"),
    ("3.13", "2.0", "psycopg"),
]


def _uv_sync(session: nox.Session, *extra: str) -> None:
    """Install the lock's versions into the session's venv (not ./.venv)."""
    session.run_install(
        "uv", "sync", "--locked", "--no-dev", "--group", "test", *extra,
        f"--python={session.virtualenv.location}",
        env={"UV_PROJECT_ENVIRONMENT": session.virtualenv.location},
    )  # fmt: skip


def _pytest(session: nox.Session, leg: str, *args: str, driver: str = "psycopg2") -> None:
    """Run pytest, recording the leg's versions and counts for the matrix table."""
    for stale in [*MATRIX_DIR.glob(f"{leg}.xml"), *MATRIX_DIR.glob(f"{leg}.versions.json")]:
        stale.unlink()  # not LEG.log: scripts/run_legs.sh is writing this session's output there
    MATRIX_DIR.mkdir(exist_ok=True)
    junit = MATRIX_DIR / f"{leg}.xml"
    session.run(
        "python", "scripts/matrix_report.py", "versions", str(MATRIX_DIR / f"{leg}.versions.json")
    )
    session.run(
        "python", "-m", "pytest", "-p", "no:cacheprovider", f"--junitxml={junit}", *args,
        env={"DBFIX_TEST_DRIVER": DRIVERS[driver]},
    )  # fmt: skip


def _fork_leg_id(python: str, sqlalchemy: str, driver: str) -> str:
    return f"fork-{python}-sa{sqlalchemy}-{driver}"


@nox.session
@nox.parametrize(
    ["python", "sqlalchemy", "driver"],
    FORK_LEGS,
    ids=[_fork_leg_id(*leg).removeprefix("fork-") for leg in FORK_LEGS],
)
def fork(session: nox.Session, sqlalchemy: str, driver: str) -> None:
    """The fork and extension tests on one Python x SQLAlchemy x driver cell."""
    _uv_sync(session)
    session.run_install("uv", "pip", "install", f"SQLAlchemy=={LOCKED_SQLALCHEMY[sqlalchemy]}")
    leg = _fork_leg_id(str(session.python), sqlalchemy, driver)
    _pytest(session, leg, *FORK_TESTS, driver=driver)


@nox.session(python="3.13")
def newest(session: nox.Session) -> None:
    """No lock: the newest release of every dependency, as a new user gets them today."""
    session.install("--resolution=highest", "-e", ".", "--group", "test")
    _pytest(session, "newest", *FORK_TESTS, "tests/test_cli.py", "tests/test_unmanaged.py")


@nox.session(python="3.11")
def legacy(session: nox.Session) -> None:
    """Flask 2.2 + Flask-SQLAlchemy 2.5 + SQLAlchemy 1.4: the stack many affected apps run."""
    session.install("-e", ".", "-r", "constraints/legacy.txt")
    _pytest(session, "legacy", *FORK_TESTS, "tests/test_cli.py", "tests/test_unmanaged.py")


@nox.session(python=WHEEL_LEG[0])
def wheel(session: nox.Session) -> None:
    """Build the sdist and wheel, check them, and run the fork tests against the installed
    wheel from the unpacked sdist's tests, with no source package anywhere on sys.path.
    It is also the matrix's cell WHEEL_LEG (Python x SQLAlchemy x driver)."""
    _, sqlalchemy, driver = WHEEL_LEG
    dist = Path(tempfile.mkdtemp(prefix="dbfix-dist-"))
    work = Path(tempfile.mkdtemp(prefix="dbfix-wheeltest-"))
    try:
        session.run_install("uv", "build", "--out-dir", str(dist), str(ROOT))
        (wheel_file,) = dist.glob("*.whl")
        (sdist_file,) = dist.glob("*.tar.gz")
        twine = ROOT / ".venv" / "bin" / "twine"  # the locked one, from scripts/setup.sh
        files = [str(wheel_file), str(sdist_file)]
        session.run(str(twine), "check", "--strict", *files, external=True)
        session.run("python", "scripts/check_dist.py", *files)
        shutil.unpack_archive(sdist_file, work)
        (unpacked,) = work.iterdir()
        shutil.rmtree(unpacked / "flask_uwsgi_dbfix")  # the tests must use the installed wheel
        locked = dist / "locked.txt"  # the lock's versions of the test dependencies
        session.run_install(
            "uv", "export", "--locked", "--no-dev", "--group", "test", "--no-emit-project",
            "--no-hashes", "--quiet", "--project", str(ROOT), "--output-file", str(locked),
        )  # fmt: skip
        session.install(str(wheel_file), "-r", str(locked))
        session.run_install("uv", "pip", "install", f"SQLAlchemy=={LOCKED_SQLALCHEMY[sqlalchemy]}")
        session.chdir(unpacked)
        session.run(
            "python", "-c",
            "import flask_uwsgi_dbfix, sys; f = flask_uwsgi_dbfix.__file__; print(f);"
            " sys.exit('not the installed wheel' if 'site-packages' not in f else 0)",
        )  # fmt: skip
        shutil.copy(ROOT / "scripts" / "matrix_report.py", unpacked / "matrix_report.py")
        MATRIX_DIR.mkdir(exist_ok=True)
        leg = "wheel-" + _fork_leg_id(*WHEEL_LEG).removeprefix("fork-")
        versions = MATRIX_DIR / f"{leg}.versions.json"
        session.run("python", "matrix_report.py", "versions", str(versions))
        session.run(
            "python", "-m", "pytest", "-p", "no:cacheprovider",
            f"--junitxml={MATRIX_DIR / (leg + '.xml')}", *FORK_TESTS,
            env={"DBFIX_TEST_DRIVER": DRIVERS[driver]},
        )  # fmt: skip
    finally:
        session.chdir(ROOT)
        shutil.rmtree(dist, ignore_errors=True)
        shutil.rmtree(work, ignore_errors=True)


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the Sphinx docs with warnings as errors, and run their code examples."""
    _uv_sync(session, "--group", "docs")
    out = Path(tempfile.mkdtemp(prefix="dbfix-docs-"))
    try:
        session.run("python", "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
                    "docs", str(out / "html"))  # fmt: skip
        session.run("python", "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "doctest",
                    "docs", str(out / "doctest"))  # fmt: skip
    finally:
        shutil.rmtree(out, ignore_errors=True)


@nox.session(python=False)
def lint(session: nox.Session) -> None:
    """ruff, ruff format and mypy --strict, in .venv (seconds; not a matrix leg)."""
    venv = ROOT / ".venv" / "bin"
    session.run(str(venv / "ruff"), "check", ".")
    session.run(str(venv / "ruff"), "format", "--check", ".")
    session.run(str(venv / "mypy"))


@nox.session(python=False)
def fast(session: nox.Session) -> None:
    """The tests that need no server, in .venv (seconds; not a matrix leg)."""
    session.run(str(ROOT / ".venv" / "bin" / "python"), "-m", "pytest", "-m", "fast", "-q")


@nox.session(python=False)
def report(session: nox.Session) -> None:
    """Print the matrix table from .matrix/ and check README.md's versions table against it."""
    session.run(sys.executable, "scripts/matrix_report.py", "table", "--check-readme", "README.md")


RANDOMLY = "pytest-randomly==5.1.0"  # only in this session's venv: .venv's runs keep their order


@nox.session(name="random", python="3.11", default=False)
def random_order(session: nox.Session) -> None:
    """The suite in a random order: a test must not depend on what ran before it.

    pytest-randomly shuffles modules, then the tests in each; pytest's header prints the
    seed (``Using --randomly-seed=N``). Replay one order, or run a part:
    ``.venv/bin/nox -s random -- --randomly-seed=N tests/test_fork_inprocess.py``.
    Not a CI leg: it is the whole suite once more."""
    _uv_sync(session, "--group", "bench")  # the benchmark tests draw charts
    session.install(RANDOMLY)
    args = session.posargs or ["tests"]
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *args)


COSMIC_RAY = "cosmic-ray==8.7.0"
# The fork path's core: what a child does with what it inherited (child.py), the pid guard
# (guard.py) and a connection held across the fork (held.py).
MUTATION_MODULES = [
    "flask_uwsgi_dbfix/child.py",
    "flask_uwsgi_dbfix/held.py",
    "flask_uwsgi_dbfix/guard.py",
]
# In-process forks against the real PostgreSQL: seconds per mutant, and they exercise every
# line of those modules. -x: a mutant is killed by its first failing test.
MUTATION_TESTS = ["tests/test_fork_inprocess.py", "tests/test_master_fork.py"]


@nox.session(python="3.11", default=False)
def mutation(session: nox.Session) -> None:
    """Mutation testing of the core with cosmic-ray, in a copy of the checkout.

    cosmic-ray (not mutmut) because it writes each mutant into the module's file on disk:
    the fork tests' children and every process a test starts import the package from disk,
    and see the mutant; mutmut 3 switches mutants inside the test process only. It prints
    the killed/survived counts and every survivor's diff, and leaves the session database
    in .matrix/mutation.sqlite. ``-- MODULE ...`` limits it to some modules. About 20 s per
    mutant here: the three modules take an hour; not a CI leg."""
    _uv_sync(session)
    session.install(COSMIC_RAY)
    modules = session.posargs or MUTATION_MODULES
    work = Path(tempfile.mkdtemp(prefix="dbfix-mutation-"))
    copy = work / "src"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns(
        ".git", ".venv", ".nox", ".matrix", "build", "*.egg-info", "__pycache__", ".thirdparty"
    ))  # fmt: skip
    python = Path(session.virtualenv.location) / "bin" / "python"
    command = [str(python), "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider", *MUTATION_TESTS]
    config = copy / "cosmic-ray.toml"
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {modules!r}\n"
        "timeout = 300.0\n"
        "excluded-modules = []\n"
        f"test-command = {' '.join(command)!r}\n"
        "[cosmic-ray.distributor]\n"
        'name = "local"\n'
    )
    try:
        session.chdir(copy)
        env = {"PYTHONPATH": str(copy)}  # the copy's package, not the checkout's
        session.run("cosmic-ray", "init", str(config), "session.sqlite", env=env)
        session.run("cosmic-ray", "--verbosity", "INFO", "exec", str(config), "session.sqlite",
                    env=env)  # fmt: skip
        session.run("cr-report", "session.sqlite", "--surviving-only", "--show-diff")
        session.run("cr-rate", "session.sqlite")  # the survival rate, in percent
        MATRIX_DIR.mkdir(exist_ok=True)
        shutil.copy(copy / "session.sqlite", MATRIX_DIR / "mutation.sqlite")
    finally:
        session.chdir(ROOT)
        shutil.rmtree(work, ignore_errors=True)
