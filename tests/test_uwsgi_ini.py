"""uWSGI ini files are read as uWSGI 2.0 reads them, and nothing is guessed.

The last tests compare with the real thing: ``uwsgi --ini FILE --get KEY`` (pyuwsgi)
prints the first value of an option after uWSGI's own expansion.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from flask_uwsgi_dbfix.check.uwsgi_ini import (
    IniError,
    UwsgiIni,
    parse_bool,
    parse_int,
    read_ini,
    settings_from_ini,
    split_ini_spec,
)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def values(ini: UwsgiIni, key: str) -> list[str | None]:
    return [o.value for o in ini.all(key)]


def value(ini: UwsgiIni, key: str) -> str | None:
    option = ini.last(key)
    assert option is not None, f"{key} not in {ini.options}"
    return option.value


# -- lines, sections, keys --------------------------------------------------------------


def test_only_the_uwsgi_section_is_read_and_comments_are_whole_lines(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "top = ignored\n"
            "[other]\nprocesses = 9\n"
            "[uwsgi]\n"
            "  ; comment\n# comment\n"
            "processes = 4 ; not a comment\n"
            "\tmodule =  app:app  \r\n",
        )
    )
    assert [(o.key, o.value) for o in ini.options] == [
        ("processes", "4 ; not a comment"),
        ("module", "app:app"),
    ]
    assert ini.section == "uwsgi"
    assert ini.last("module") is not None and ini.last("module").lineno == 8  # type: ignore[union-attr]


def test_a_named_section_is_read_with_path_colon_section(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ini", "[uwsgi]\nprocesses = 1\n[prod]\nprocesses = 8\n")
    ini = read_ini(f"{path}:prod")
    assert values(ini, "processes") == ["8"]
    assert ini.section == "prod"


def test_split_ini_spec_keeps_paths_that_exist(tmp_path: Path) -> None:
    odd = write(tmp_path / "we:ird.ini", "[uwsgi]\nx = 1\n")
    assert split_ini_spec(str(odd)) == (str(odd), "uwsgi")
    assert split_ini_spec("deploy/u.ini:prod") == ("deploy/u.ini", "prod")
    assert split_ini_spec("u.ini") == ("u.ini", "uwsgi")


def test_repeated_sections_and_keys_all_count_in_order(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nmount = /a=a:app\nprocesses = 2\n[x]\n"
            "[uwsgi]\nmount = /b=b:app\nworkers = 6\n",
        )
    )
    assert values(ini, "mount") == ["/a=a:app", "/b=b:app"]
    # processes and workers are one setting: the last one written wins.
    assert settings_from_ini(ini).processes == 6


def test_a_key_without_equals_is_a_flag_with_an_empty_value(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\nmaster\nlazy-apps =\n"))
    assert values(ini, "master") == [""]
    settings = settings_from_ini(ini)
    assert settings.master is True
    assert settings.lazy_apps is True


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("true", True),
        ("1", True),
        ("yes", True),
        ("on", True),
        ("", True),
        ("anything", True),
        ("false", False),
        ("FALSE", False),
        ("0", False),
        ("no", False),
        ("Off", False),
    ],
)
def test_booleans_follow_uwsgi_opt_true(text: str, expected: bool) -> None:
    assert parse_bool(text) is expected


def test_integers_read_like_atoi_but_words_are_not_zero() -> None:
    assert parse_int("4") == 4
    assert parse_int(" 4 ; four") == 4
    assert parse_int("four") is None


# -- magic variables -------------------------------------------------------------------


def test_magic_variables_describe_the_file(tmp_path: Path) -> None:
    path = write(
        tmp_path / "conf" / "site.ini",
        "[uwsgi]\nd = %d\np = %p\ns = %s\nn = %n\ne = %e\nc = %c\nx = %x\npct = 100%%\n"
        "unknown = a%qb\nfirst = %D\n",
    )
    ini = read_ini(path)
    real = os.path.realpath(path)
    assert value(ini, "d") == os.path.dirname(real) + "/"
    assert value(ini, "p") == real
    assert value(ini, "s") == "site.ini"
    assert value(ini, "n") == "site"
    assert value(ini, "e") == "ini"
    assert value(ini, "c") == "conf"
    assert value(ini, "x") == ""
    assert value(ini, "pct") == "100%"
    assert value(ini, "unknown") == "ab"  # uWSGI replaces an unknown %X with nothing
    assert value(ini, "first") == value(ini, "d")


def test_x_is_the_section_asked_for(tmp_path: Path) -> None:
    path = write(tmp_path / "a.ini", "[prod]\nx = %x\n")
    assert value(read_ini(f"{path}:prod"), "x") == "prod"


def test_run_time_magic_variables_are_unresolved_not_guessed(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\nprocesses = %k\nlogto = /log/%h.log\n"))
    assert values(ini, "processes") == [None]
    assert values(ini, "logto") == [None]
    tokens = {(u.key, u.token) for u in ini.unresolved}
    assert tokens == {("processes", "%k"), ("logto", "%h")}
    assert "CPU cores" in ini.unresolved[0].reason
    assert settings_from_ini(ini).unresolved_options == ("processes",)


# -- $(ENV), @(file), %(option) ---------------------------------------------------------


def test_environment_variables_are_expanded_or_reported(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nprocesses = $(WORKERS)\nsocket = $(MISSING)\nd = $(MISSING:-8)\n",
        ),
        env={"WORKERS": "3"},
    )
    assert values(ini, "processes") == ["3"]
    assert values(ini, "socket") == [None]
    assert values(ini, "d") == [None]
    reasons = {u.token: u.reason for u in ini.unresolved}
    assert reasons["$(MISSING)"] == "environment variable not set here"
    assert "no $(VAR:-default) syntax" in reasons["$(MISSING:-8)"]


def test_file_reads_drop_one_trailing_newline(tmp_path: Path) -> None:
    write(tmp_path / "n.txt", "5\n")
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nprocesses = @(n.txt)\nother = @(exec://nproc)\nlost = @(nope.txt)\n",
        )
    )
    assert values(ini, "processes") == ["5"]
    assert values(ini, "other") == [None]
    assert values(ini, "lost") == [None]
    reasons = {u.token: u.reason for u in ini.unresolved}
    assert "would fetch or run" in reasons["@(exec://nproc)"]
    assert "cannot read" in reasons["@(nope.txt)"]


def test_placeholders_refer_to_the_first_definition(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nbase = 2\nprocesses = %(base)\nbase = 7\n"
            "later = %(after)\nafter = x%(base)\n",
        )
    )
    assert values(ini, "processes") == ["2"]
    assert values(ini, "later") == ["x2"]


def test_placeholder_arithmetic(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\ncores = 4\nprocesses = %(cores * 2 + 1)\n"))
    assert settings_from_ini(ini).processes == 9


def test_unknown_placeholder_is_unresolved(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\nprocesses = %(workers_count)\n"))
    assert values(ini, "processes") == [None]
    (item,) = ini.unresolved
    assert (item.key, item.token, item.lineno) == ("processes", "%(workers_count)", 2)
    assert settings_from_ini(ini).processes is None
    assert settings_from_ini(ini).unresolved_options == ("processes",)


def test_a_placeholder_loop_is_reported_not_followed_forever(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\na = %(b)\nb = %(a)\n"))
    assert values(ini, "a") == [None]
    assert any("placeholder loop" in u.reason for u in ini.unresolved)


def test_set_placeholder_is_not_expanded_but_set_is(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nset-ph = myhome=$(HOME)\nset = n=$(N)\nx = %(myhome)\ny = %(n)\n",
        ),
        env={"HOME": "/h", "N": "2"},
    )
    # uWSGI skips the $() pass for placeholders: the text stays as written.
    assert values(ini, "x") == ["$(HOME)"]
    assert values(ini, "y") == ["2"]


def test_log_format_variables_are_not_placeholders(tmp_path: Path) -> None:
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\nlogformat = %(method) %(uri)\n"))
    assert values(ini, "logformat") == ["%(method) %(uri)"]
    assert ini.unresolved == ()


# -- includes --------------------------------------------------------------------------


def test_includes_are_read_in_place_relative_to_the_start_directory(tmp_path: Path) -> None:
    write(tmp_path / "base.ini", "[uwsgi]\nprocesses = 2\nmaster = true\n")
    write(tmp_path / "conf" / "extra.ini", "[uwsgi]\nthreads = 4\n")
    ini = read_ini(
        write(
            tmp_path / "app.ini",
            "[uwsgi]\ninclude = base.ini\nprocesses = 8\nini = %dconf/extra.ini\n",
        )
    )
    assert [o.key for o in ini.options] == [
        "include",
        "processes",
        "master",
        "processes",
        "ini",
        "threads",
    ]
    assert settings_from_ini(ini).processes == 8
    assert [os.path.basename(f) for f in ini.files] == ["app.ini", "base.ini", "extra.ini"]


def test_relative_includes_follow_the_cwd_uwsgi_starts_in(tmp_path: Path) -> None:
    write(tmp_path / "conf" / "a.ini", "[uwsgi]\ninclude = conf/b.ini\n")
    write(tmp_path / "conf" / "b.ini", "[uwsgi]\nprocesses = 3\n")
    assert values(read_ini(tmp_path / "conf" / "a.ini", cwd=tmp_path), "processes") == ["3"]
    ini = read_ini(tmp_path / "conf" / "a.ini")  # default cwd: the ini's directory
    assert "processes" not in [o.key for o in ini.options]
    assert "no such file" in ini.unresolved[0].reason


def test_ini_can_load_a_section_of_the_same_file_include_cannot(tmp_path: Path) -> None:
    text = "[uwsgi]\nini = :common\ninclude = :common\n[common]\nmaster = 1\n"
    ini = read_ini(write(tmp_path / "a.ini", text))
    assert values(ini, "master") == ["1"]
    (item,) = ini.unresolved
    assert (item.key, item.lineno) == ("include", 3)
    assert "ending in .ini" in item.reason


def test_include_loops_are_detected(tmp_path: Path) -> None:
    write(tmp_path / "a.ini", "[uwsgi]\ninclude = b.ini\nprocesses = 2\n")
    write(tmp_path / "b.ini", "[uwsgi]\ninclude = a.ini\n")
    ini = read_ini(tmp_path / "a.ini")
    assert values(ini, "processes") == ["2"]
    (item,) = ini.unresolved
    assert item.reason.startswith("include loop: ")
    assert item.reason.count("a.ini") == 2


def test_broken_includes_are_unresolved_not_fatal(tmp_path: Path) -> None:
    write(tmp_path / "nosection.ini", "[other]\nx = 1\n")
    write(tmp_path / "bin.ini", "\x00\x01")
    write(tmp_path / "header.ini", "[uwsgi\nmaster = true\n")
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\ninclude = missing.ini\ninclude = nosection.ini\ninclude = bin.ini\n"
            "include = $(CONF)/x.ini\ninclude = http://example.com/x.ini\n"
            "include = header.ini\nmaster = true\n",
        ),
        env={"CONF": "/etc"},
    )
    reasons = [u.reason for u in ini.unresolved]
    assert len(reasons) == 6
    assert "no such file" in reasons[0]
    assert "no [uwsgi] section" in reasons[1]
    assert "binary data" in reasons[2]
    assert "before expanding $(" in reasons[3]  # uWSGI reads includes before $() expansion
    assert "not read" in reasons[4]
    assert "section header must end with" in reasons[5]
    assert values(ini, "master") == ["true"]


def test_options_inside_option_logic_are_unresolved(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nif-env = PROD\nprocesses = 8\nlazy-apps = true\nendif =\nmaster = true\n",
        )
    )
    assert "processes" not in [o.key for o in ini.options]
    assert {u.key for u in ini.unresolved} == {"processes", "lazy-apps"}
    settings = settings_from_ini(ini)
    assert settings.master is True
    assert set(settings.unresolved_options) == {"processes", "lazy-apps"}


def test_inherit_is_applied_after_expansion(tmp_path: Path) -> None:
    write(tmp_path / "t.ini", "[uwsgi]\nprocesses = $(N)\nmaster = true\n")
    ini = read_ini(write(tmp_path / "a.ini", "[uwsgi]\ninherit = t.ini\n"), env={"N": "2"})
    assert values(ini, "master") == ["true"]
    assert values(ini, "processes") == [None]
    assert "does not expand inherited" in ini.unresolved[0].reason


# -- settings that decide forking ------------------------------------------------------


def test_settings_fold_aliases_and_last_wins(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nmaster = true\nprocesses = 2\nworkers = 4\nlazy = true\nlazy = false\n"
            "lazy-apps = yes\nenable-threads = true\nthreads = 2\npy-call-osafterfork = true\n"
            "max-requests = 500\nmaster = false\n",
        )
    )
    s = settings_from_ini(ini)
    assert (s.master, s.processes, s.lazy_apps, s.lazy_key) == (False, 4, True, "lazy-apps")
    assert (s.enable_threads, s.threads, s.py_call_osafterfork, s.max_requests) == (
        True,
        2,
        True,
        500,
    )


def test_some_options_turn_the_master_on(tmp_path: Path) -> None:
    s = settings_from_ini(read_ini(write(tmp_path / "a.ini", "[uwsgi]\ntouch-reload = x\n")))
    assert (s.master, s.master_implied_by) == (True, "touch-reload")
    s = settings_from_ini(
        read_ini(write(tmp_path / "b.ini", "[uwsgi]\nstats = :1717\nmaster = false\n"))
    )
    assert (s.master, s.master_implied_by) == (False, None)


def test_defaults_when_nothing_is_set(tmp_path: Path) -> None:
    s = settings_from_ini(read_ini(write(tmp_path / "a.ini", "[uwsgi]\nsocket = :3031\n")))
    assert (s.master, s.processes, s.processes_set, s.lazy_apps) == (False, None, False, False)
    assert s.served == ()


def test_served_apps(tmp_path: Path) -> None:
    ini = read_ini(
        write(
            tmp_path / "a.ini",
            "[uwsgi]\nchdir = src\ncallable = app\nmodule = pkg.wsgi\n"
            "wsgi-file = wsgi.py\nmount = /admin=admin:create_app()\nmount = /x=x.wsgi\n",
        )
    )
    served = settings_from_ini(ini).served
    assert [(a.option, a.module, a.callable, a.mountpoint) for a in served] == [
        ("mount", "admin", "create_app()", "/admin"),
        ("mount", None, "app", "/x"),
        ("module", "pkg.wsgi", "app", None),
        ("wsgi-file", None, "app", None),
    ]
    assert served[3].file == str(tmp_path / "src" / "wsgi.py")
    default = settings_from_ini(read_ini(write(tmp_path / "b.ini", "[uwsgi]\nwsgi = m\n")))
    assert default.served[0].callable == "application"


def test_single_interpreter_is_a_boolean_that_defaults_to_not_set(tmp_path: Path) -> None:
    def single(text: str) -> bool | None:
        path = write(tmp_path / "a.ini", "[uwsgi]\n" + text)
        return settings_from_ini(read_ini(path, env={})).single_interpreter

    assert single("master = true\n") is None
    assert single("single-interpreter = true\n") is True
    assert single("single-interpreter\n") is True  # a bare flag is on
    assert single("single-interpreter = 0\n") is False
    assert single("single-interpreter = true\nsingle-interpreter = off\n") is False
    assert single("single_interpreter = true\n") is None  # uWSGI ignores it
    path = write(tmp_path / "b.ini", "[uwsgi]\nsingle_interpreter = 1\n")
    assert settings_from_ini(read_ini(path)).misspelt == (
        ("single_interpreter", "single-interpreter"),
    )
    path = write(tmp_path / "c.ini", "[uwsgi]\nsingle-interpreter = $(NOT_SET)\n")
    s = settings_from_ini(read_ini(path, env={}))
    assert (s.single_interpreter, s.unresolved_options) == (None, ("single-interpreter",))


def test_underscored_options_are_flagged_as_ignored_by_uwsgi(tmp_path: Path) -> None:
    s = settings_from_ini(read_ini(write(tmp_path / "a.ini", "[uwsgi]\nlazy_apps = true\n")))
    assert s.lazy_apps is False
    assert s.misspelt == (("lazy_apps", "lazy-apps"),)


def test_inline_comments_are_flagged(tmp_path: Path) -> None:
    s = settings_from_ini(
        read_ini(write(tmp_path / "a.ini", "[uwsgi]\nlazy-apps = false  # off for now\n"))
    )
    assert s.lazy_apps is True  # what uWSGI does with it
    assert [o.key for o in s.inline_comments] == ["lazy-apps"]


# -- files that are not usable at all --------------------------------------------------


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "file is empty"),
        (b"  \n\n", "file is empty"),
        (b"\x7fELF\x02\x01\x00\x00garbage", "binary data"),
        (b"[uwsgi]\nmodule = caf\xe9\n", "not UTF-8"),
        (b"[other]\nprocesses = 2\n", "no [uwsgi] section"),
        (b"processes = 2\n", "no [uwsgi] section"),
        (b"[uwsgi\nprocesses = 2\n", "section header must end with"),
        (b"[uwsgi] ; main\nprocesses = 2\n", r"would read it as \[uwsgi\] ; mai\]"),
    ],
)
def test_unusable_files_raise_ini_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.ini"
    path.write_bytes(content)
    with pytest.raises(IniError, match=message if "\\" in message else re.escape(message)):
        read_ini(path)


def test_missing_file_and_directory_raise_ini_error(tmp_path: Path) -> None:
    with pytest.raises(IniError, match="no such file"):
        read_ini(tmp_path / "nope.ini")
    with pytest.raises(IniError, match="is a directory"):
        read_ini(tmp_path)


# -- against the real uWSGI ------------------------------------------------------------

UWSGI = shutil.which("uwsgi") or str(Path(sys.executable).parent / "uwsgi")


def uwsgi_get(path: Path, key: str, cwd: Path, env: dict[str, str]) -> str | None:
    """``uwsgi --get`` prints the first value of an option after uWSGI's expansion."""
    result = subprocess.run(
        [UWSGI, "--ini", str(path), "--get", key],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    lines = result.stdout.splitlines()
    return lines[-1] if lines else None


def test_same_values_as_uwsgi_itself(tmp_path: Path) -> None:
    write(tmp_path / "inc" / "common.ini", "[uwsgi]\nfrominc = %n-%c\nnum = 40\n")
    write(tmp_path / "value.txt", "from-file\n")
    path = write(
        tmp_path / "app.ini",
        "[uwsgi]\n"
        "d = %d\np = %p\ns = %s\nn = %n\ne = %e\nc = %c\nj = %j\nz = %0:%1\n"
        "q = a%qb\npc = 100%%\n"
        "home = $(HOME)\n"
        "num = 7\n"
        "include = inc/common.ini\n"
        "first = %(num)\n"
        "math = %(num + 2)\n"
        "nested = <%(first)>\n"
        "fromfile = @(value.txt)\n"
        "flag\n"
        "joined = a%\nb\n"
        "set-ph = myhome=$(HOME)\nx = %(myhome)\nset = n2=$(HOME)\ny = %(n2)\n"
        "later = %(after)\nafter = x%(num)\n",
    )
    env = {**os.environ, "HOME": "/home/someone"}
    ini = read_ini(path, cwd=tmp_path, env=env)
    keys = ["d", "p", "s", "n", "e", "c", "j", "z", "q", "pc", "home", "num", "frominc"]
    keys += ["first", "math", "nested", "fromfile", "joined", "x", "y", "later"]
    ours = {k: ini.all(k)[0].value for k in keys}
    theirs = {k: uwsgi_get(path, k, tmp_path, env) for k in keys}
    assert ours == theirs
