"""``python -m benchmarks --quick`` runs end to end: every mode served every request.

No timing is asserted (the machines are shared); the figures are for people, in
benchmarks/results/.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def bench(
    *args: str, module: str = "benchmarks", timeout: float = 600
) -> subprocess.CompletedProcess[str]:
    """``python -m MODULE ARGS`` from the repository root. If the test is interrupted or
    times out, the benchmark gets SIGTERM (it then stops the servers and interpreters it
    started and removes its files; a SIGKILL, what subprocess.run sends, would leave them)."""
    with subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out, err = proc.communicate(timeout=timeout)
        except BaseException:
            proc.terminate()
            try:
                proc.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
            raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def test_quick_benchmark_runs_and_every_mode_served_every_request(tmp_path: Path) -> None:
    # One worker count: every mode and code path, half the time of --quick's two.
    done = bench("--quick", "--workers", "2", "--out", str(tmp_path), timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    ran = {r["mode"] for r in data["runs"]}
    expected = {name for name, m in data["modes"].items() if m["available"]}
    assert ran == expected
    assert {"bare", "fix", "lazy", "fix_clean", "fix_keep"} <= ran
    for run in data["runs"]:
        assert run["error"] == "", run
        assert run["failed"] == 0, run
        assert run["requests"] > 0, run
        assert run["ready_s"] is not None, run
    # The connections row is counted, not guessed: lazy-apps workers each open their own at
    # import, the app without import-time queries opens none before its first request.
    by_mode = {(r["mode"], r["workers"]): r for r in data["runs"]}
    for workers in data["workers"]:
        assert by_mode["bare", workers]["conns_startup"] == 0
        assert by_mode["fix_clean", workers]["conns_startup"] == 0
        assert by_mode["lazy", workers]["conns_startup"] == workers
    for name in ("plain", "recipe", "ours", "ours_held", "ours_getpid"):
        assert name in data["pid_guard"]["ns_per_connect"]
    protection = data["pid_guard"]["child_gets_fresh_connection"]
    # Every variant of the shipped guard protects a child after every kind of fork, hook or
    # no hook, whether the pool was empty or not when guarded, with or without the page.
    for name in ("ours", "ours_held", "ours_getpid"):
        assert set(protection[name].values()) == {"replaced"}, protection
    assert protection["plain"]["raw libc fork"] == "reused"  # the check can fail
    for chart in ("memory", "startup", "startup_cpu", "throughput", "connections", "pid_guard"):
        assert (tmp_path / f"{chart}.png").stat().st_size > 0


USER_APP = """
import os

from flask import Flask
from sqlalchemy import create_engine, text

app = Flask(__name__)
engine = create_engine(os.environ["DATABASE_URL"])


@app.get("/ping")
def ping():
    return "<p>up</p>"  # HTML is fine for --ready-path


@app.get("/db")
def db():
    with engine.connect() as conn:
        return {"one": conn.execute(text("SELECT 1")).scalar()}


@app.get("/private")
def private():
    return {"error": "Unauthorized"}, 401
"""


def test_your_own_app_from_its_directory(tmp_path: Path) -> None:
    """--app with --app-dir: a project that is not installed, served from its own directory
    (nothing written into this repository), labelled; a path that needs a login fails."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "userapp.py").write_text(USER_APP)
    common = ["--app", "userapp:app", "--app-dir", str(project), "--label", "my label"]
    common += ["--workers", "1", "--repeats", "1", "--requests", "20", "--guard-rounds", "1"]
    done = bench(*common, "--path", "/db", "--out", str(tmp_path))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    data = json.loads((tmp_path / "benchmarks.json").read_text())
    assert data["label"] == "my label" and data["app_dir"] == str(project)
    assert {r["mode"] for r in data["runs"]} == {"prefork", "lazy"}
    assert all(r["failed"] == 0 and r["requests"] > 0 for r in data["runs"]), data["runs"]
    assert "[my label]" in (tmp_path / "benchmarks.txt").read_text()

    denied = bench(*common, "--path", "/private", "--out", str(tmp_path / "denied"))
    assert denied.returncode == 1
    assert "FAILED: prefork" in denied.stderr


def test_bad_arguments_get_a_message_not_a_traceback(tmp_path: Path) -> None:
    for args, message in [
        (["--app", "x:app", "--app-dir", str(tmp_path / "nope")], "no such directory"),
        (["--label", "x"], "go with --app"),
        (["--app", "nocolon"], "expected module:callable"),
    ]:
        done = bench(*args, timeout=60)
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr and "Traceback" not in done.stderr, done.stderr
