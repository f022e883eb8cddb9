"""Hostile ini input: special files, huge files, symlink loops and pathological values
give one line and exit 2 (or a note for an include), quickly, never a hang or a traceback.

The reader's linear time on values full of unclosed openers is measured in
``benchmarks/ini_reader.py`` (not timed here: these machines are shared and noisy).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from flask_uwsgi_dbfix.check.uwsgi_ini import MAX_FILE_BYTES, IniError, read_ini

ROOT = Path(__file__).resolve().parents[1]


def check(ini: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``python -m flask_uwsgi_dbfix check --ini INI`` in a fresh process, bounded."""
    return subprocess.run(
        [sys.executable, "-m", "flask_uwsgi_dbfix", "check", "--ini", ini],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,  # a FIFO used to block here for ever
    )


def special(tmp_path: Path, kind: str) -> str:
    if kind == "fifo":
        path = tmp_path / "uwsgi.ini"
        os.mkfifo(path)
        return str(path)
    if kind == "device":
        return "/dev/zero"
    if kind == "too big":
        path = tmp_path / "big.ini"
        path.write_text("[uwsgi]\n" + "# padding\n" * (MAX_FILE_BYTES // 10 + 1))
        return str(path)
    path = tmp_path / "loop.ini"  # a loop of symbolic links
    os.symlink(tmp_path / "other.ini", path)
    os.symlink(path, tmp_path / "other.ini")
    return str(path)


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("fifo", "is a FIFO (named pipe), not a regular file"),
        ("device", "is a character device, not a regular file"),
        ("too big", "over the 1024 KiB limit"),
        ("symlink loop", "a loop of symbolic links"),
    ],
)
def test_a_special_file_as_the_ini_is_one_line_and_exit_2(
    tmp_path: Path, kind: str, said: str
) -> None:
    done = check(special(tmp_path, kind), tmp_path)
    assert done.returncode == 2, done
    assert done.stdout == ""
    (line,) = done.stderr.splitlines()
    assert line.startswith("Error: ") and said in line, line
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("kind", ["fifo", "device", "too big", "symlink loop"])
def test_a_special_file_in_an_include_or_a_file_placeholder_is_a_note(
    tmp_path: Path, kind: str
) -> None:
    target = special(tmp_path, kind)
    ini = tmp_path / "main.ini"
    ini.write_text(f"[uwsgi]\nmaster = true\ninclude = {target}\nprocesses = @({target})\n")
    read = read_ini(ini)
    notes = {u.token: u.reason for u in read.unresolved}
    assert sum(target in f"{token} {reason}" for token, reason in notes.items()) >= 2, notes
    phrases = ("not a regular file", "KiB limit", "loop of symbolic links")
    assert any(p in notes[f"@({target})"] for p in phrases), notes
    assert dict((o.key, o.value) for o in read.options)["processes"] is None


def test_read_ini_raises_ini_error_for_every_special_file(tmp_path: Path) -> None:
    for kind in ("fifo", "device", "too big", "symlink loop"):
        with pytest.raises(IniError):
            read_ini(special(tmp_path / kind.replace(" ", "_"), kind))


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    for kind in ("fifo", "device", "too_big", "symlink_loop"):
        (tmp_path / kind).mkdir()
