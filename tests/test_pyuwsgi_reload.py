"""What the ``pyuwsgi-venv-reload`` finding says, on the real server: pyuwsgi started from
this virtualenv dies on its first reload (SIGHUP) without ``binary-path``, and reloads with
the line the finding gives. Starts uWSGI twice (about 3 s), so it is not in the fast tier."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from flask_uwsgi_dbfix.check.findings import ini as ini_findings


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def _reload_survives(tmp_path: Path, extra: str) -> tuple[bool, str]:
    """Start pyuwsgi (this virtualenv's) on a hello-world app, SIGHUP its master, and say
    whether it serves again; the master is stopped by its own pid whatever happens."""
    script = Path(sys.prefix, "bin", "uwsgi")
    if sys.prefix == sys.base_prefix or b"pyuwsgi" not in script.read_bytes()[:4096]:
        pytest.skip("needs pyuwsgi in a virtualenv")
    (tmp_path / "hello.py").write_text(
        "def application(environ, start_response):\n"
        "    start_response('200 OK', [])\n    return [b'ok']\n"
    )
    port = _free_port()
    ini = tmp_path / f"reload{port}.ini"
    ini.write_text(
        f"[uwsgi]\nmaster = true\nprocesses = 1\nhttp-socket = 127.0.0.1:{port}\n"
        f"wsgi-file = {tmp_path / 'hello.py'}\n{extra}"
    )
    log = tmp_path / f"reload{port}.log"
    env = {k: v for k, v in os.environ.items() if k != "UWSGI_BINARY_PATH"}
    with log.open("w") as out:
        master = subprocess.Popen([str(script), "--ini", str(ini)], stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 30
        while not _answers(port):
            assert master.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        master.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 20
        while "binary reloading" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        while time.monotonic() < deadline:
            if master.poll() is not None:
                return False, log.read_text()
            if "binary reloading" in log.read_text() and _answers(port):
                return True, log.read_text()
            time.sleep(0.1)
        return False, log.read_text()
    finally:
        if master.poll() is None:
            master.send_signal(signal.SIGINT)
            try:
                master.wait(10)
            except subprocess.TimeoutExpired:
                master.kill()
                master.wait(10)


def test_pyuwsgi_reload_in_a_virtualenv_dies_without_binary_path_and_survives_with_it(
    tmp_path: Path,
) -> None:
    """What the finding says, on the real server: the base interpreter cannot import
    pyuwsgi; binary-path naming the virtualenv's python (the finding's fix) reloads."""
    survived, log = _reload_survives(tmp_path, "")
    assert not survived
    assert "No module named 'pyuwsgi'" in log
    python = ini_findings.pyuwsgi_venv_python()
    survived, log = _reload_survives(tmp_path, f"binary-path = {python}\n")
    assert survived, log
