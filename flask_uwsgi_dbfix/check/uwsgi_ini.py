"""Read a uWSGI ini file the way uWSGI 2.0 does, as far as a fork audit needs it.

``flask dbfix check`` must tell whether uWSGI will load the app in its master and fork
workers from it, so it has to see the options uWSGI sees. uWSGI's ini reader is not
``configparser``: it has no inline comments, a key without ``=`` is a flag, repeated keys
are all kept, magic variables (``%d``, ``%n`` ...) are replaced in the raw text while the
file is read, ``include``/``ini`` load other files on the spot, and ``$(ENV)``,
``@(file)`` and ``%(option)`` are expanded afterwards in three passes over every option.
This module replays those rules (``core/ini.c``, ``core/io.c``, ``core/uwsgi.c``,
``core/config.c``, ``core/utils.c`` in unbit/uwsgi, branch uwsgi-2.0).

Whatever depends on the machine or the moment uWSGI runs on (its working directory, the
hostname, a missing environment variable, ``@(exec://...)``) is not guessed: it becomes
an :class:`Unresolved` item and the option's value is ``None``.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import re
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

__all__ = [
    "IniError",
    "IniOption",
    "ServedApp",
    "Unresolved",
    "UwsgiIni",
    "UwsgiSettings",
    "parse_bool",
    "parse_int",
    "read_ini",
    "settings_from_ini",
    "split_ini_spec",
]

DEFAULT_SECTION = "uwsgi"

# Magic variables that only exist when uWSGI runs: never guessed from this machine.
_RUNTIME_MAGIC: dict[str, str] = {
    "v": "uWSGI's working directory",
    "h": "the hostname",
    "t": "the start time",
    "T": "the start time",
    "k": "the number of CPU cores",
    "u": "uWSGI's user id",
    "U": "uWSGI's user name",
    "g": "uWSGI's group id",
    "G": "uWSGI's group name",
    "b": "the uWSGI binary path",
    "V": "the uWSGI version",
}
_PER_FILE_MAGIC = "opsndcxeij0123456789"

# Keys that switch uWSGI's option logic on and off (core/uwsgi.c, core/config.c).
_LOGIC_START = frozenset(
    "for for-glob for-times for-readline if-opt if-not-opt if-env if-not-env ifenv "
    "if-reload if-not-reload if-hostname if-not-hostname if-hostname-match "
    "if-not-hostname-match if-exists if-not-exists ifexists if-plugin if-not-plugin "
    "ifplugin if-file if-not-file if-dir if-not-dir ifdir if-directory else".split()
)
_LOGIC_END = frozenset({"end", "endfor", "endif", "end-if", "end-for"})

# Options flagged UWSGI_OPT_MASTER / UWSGI_OPT_LOG_MASTER in uWSGI 2.0: setting any of
# them turns the master process on even without ``master = true``.
_MASTER_IMPLYING = frozenset(
    """alarm alarm-backlog alarm-fd alarm-listen-queue alarm-log alarm-lq alarm-metric
    alarm-segfault attach-control-daemon attach-daemon attach-daemon2 backlog-alarm
    brutal-reload-on-fd cache-store cache-udp-node cache-udp-server cheap cheaper
    cheaper-algo cheaper-initial cheaper-overload cheaper-rss-limit-hard
    cheaper-rss-limit-soft cheaper-step check-interval check-mount check-mountpoint cron
    cron-legion cron2 daemons-honour-stdin enable-metrics evil-reload-on-as
    evil-reload-on-rss exception-handler farm forkbomb-delay fs-brutal-reload fs-reload
    fs-signal idle legion legion-attach-daemon legion-cron legion-death
    legion-death-on-lord-error legion-freq legion-join legion-lord legion-mcast legion-node
    legion-node-joined legion-node-left legion-quorum legion-scroll legion-setup
    legion-skew-tolerance legion-smart-attach-daemon legion-smart-attach-daemon2
    legion-tolerance legion-unlord listen-queue-alarm log-alarm log-drain log-encoder
    log-filter log-master log-maxsize log-req-encoder log-req-route log-route log-socket
    log-syslog logger logger-req lq-alarm master-fifo metric metric-alarm metric-dir
    metric-dir-restore metric-threshold metrics-dir metrics-dir-restore metrics-no-cores
    mount-check mountpoint-check mule mule-msg-size mules multicast not-alarm-log
    not-log-alarm notify-socket queue-store rbtimer reload-on-fd req-logger segfault-alarm
    setns-socket signal-rbtimer signal-timer smart-attach-daemon smart-attach-daemon2
    spooler spooler-external ssl-session-use-cache ssl-sessions-use-cache st
    static-cache-paths static-cache-paths-name stats stats-http stats-min stats-minified
    stats-no-cores stats-no-metrics stats-push stats-pusher-default-freq
    stats-pushers-default-freq stats-server subscribe subscribe-to subscribe-with-modifier1
    subscribe2 subscription-notify-socket subscriptions-credentials-check
    subscriptions-sign-check subscriptions-sign-check-tolerance
    subscriptions-sign-skip-uid threaded-logger timer touch-chain-reload touch-exec
    touch-logreopen touch-logrotate touch-mules-reload touch-reload touch-signal
    touch-spoolers-reload touch-workers-reload udp unique-cron unique-cron-legion
    unique-legion-cron zerg-server py-tracebacker py-auto-reload py-autoreload
    python-auto-reload python-autoreload py-auto-reload-ignore""".split()
)

# Options whose ``%(...)`` is uWSGI's own run-time syntax, not a config placeholder.
_RUNTIME_PLACEHOLDER_KEYS = re.compile(r"^(log-?format|log-req-.*|logformat-strftime)$")

_COMMENT = re.compile(r"\s[;#]")
_EXPANSION_OPENERS = ("$(", "@(", "%(")
_MAX_EXPANSIONS = 64
MAX_FILE_BYTES = 1024 * 1024
"""The largest ini, include or ``@(file)`` the check reads (1 MiB; uWSGI configs are KBs)."""
_SENTINEL = "\x00"  # never in a file we accept: marks run-time-only magic variables
_SENTINEL_RE = re.compile("\x00(.)\x00", re.DOTALL)


class IniError(Exception):
    """The file cannot be used as a uWSGI ini at all (missing, binary, no section...)."""


@dataclass(frozen=True)
class Unresolved:
    """Something in the config that cannot be known without running uWSGI."""

    file: str
    lineno: int
    key: str
    token: str
    """The construct as written, e.g. ``%(base)``, ``$(PORT)``, ``%h``, ``include = x.ini``."""
    reason: str


@dataclass(frozen=True)
class IniOption:
    """One ``key = value`` uWSGI will see, in the order it sees them."""

    key: str
    value: str | None
    """Fully expanded value; ``None`` when something in it could not be resolved."""
    file: str
    lineno: int


@dataclass(frozen=True)
class UwsgiIni:
    """A uWSGI ini file with its includes, read and expanded."""

    path: str
    section: str
    files: tuple[str, ...]
    options: tuple[IniOption, ...]
    unresolved: tuple[Unresolved, ...]

    def all(self, *keys: str) -> list[IniOption]:
        """Every occurrence of any of ``keys`` (aliases share one setting), in order."""
        return [o for o in self.options if o.key in keys]

    def last(self, *keys: str) -> IniOption | None:
        """The occurrence that wins for a scalar option: uWSGI applies them in order."""
        found = self.all(*keys)
        return found[-1] if found else None


@dataclass
class _Entry:
    key: str
    value: str
    file: str
    lineno: int
    configured: bool = False
    """uWSGI's flag: immediate options and placeholders skip the expansion passes."""
    unresolved: bool = False


@dataclass
class _State:
    cwd: str
    env: Mapping[str, str]
    entries: list[_Entry] = field(default_factory=list)
    unresolved: list[Unresolved] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    stack: list[str] = field(default_factory=list)
    first_magic: dict[str, str] | None = None
    last_file: str | None = None
    logic: str | None = None
    inherits: list[_Entry] = field(default_factory=list)

    def note(self, entry: _Entry, token: str, reason: str) -> None:
        entry.unresolved = True
        item = Unresolved(entry.file, entry.lineno, entry.key, token, reason)
        if item not in self.unresolved:
            self.unresolved.append(item)

    def note_option(self, entry: _Entry, reason: str) -> None:
        """The whole ``key = value`` line cannot be used."""
        self.note(entry, f"{entry.key} = {entry.value}", reason)


def split_ini_spec(spec: str) -> tuple[str, str]:
    """``file.ini:section`` -> (``file.ini``, ``section``); the section defaults to uwsgi.

    Like uWSGI, the last colon separates the section, unless the whole spec names an
    existing file.
    """
    if os.path.exists(spec):
        return spec, DEFAULT_SECTION
    return _split_include(spec)


def read_ini(
    spec: str | os.PathLike[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> UwsgiIni:
    """Read ``spec`` (``path`` or ``path:section``) with its includes and expand it.

    ``cwd`` is the directory uWSGI would start in; relative ``include``/``ini``/``@()``
    paths are opened from it, as uWSGI does. It defaults to the directory of the file,
    which is where the Emperor and most service units start uWSGI. ``env`` defaults to
    this process's environment. Raises :class:`IniError` when the top-level file cannot
    be used at all; problems in included files become :class:`Unresolved` items.
    """
    path, section = split_ini_spec(os.fspath(spec))
    top = _check_file(path)
    state = _State(
        cwd=os.fspath(cwd) if cwd is not None else os.path.dirname(top),
        env=os.environ if env is None else env,
    )
    _load(state, path, section, origin=None, resolved=top)
    _expand_all(state)
    for entry in state.inherits:
        _load_inherited(state, entry)
    return UwsgiIni(
        path=top,
        section=section,
        files=tuple(state.files),
        options=tuple(_to_option(e) for e in state.entries),
        unresolved=tuple(state.unresolved),
    )


def _to_option(entry: _Entry) -> IniOption:
    value = None if entry.unresolved or _SENTINEL in entry.value else entry.value
    return IniOption(entry.key, value, entry.file, entry.lineno)


# -- reading files ---------------------------------------------------------------------


def _check_file(path: str) -> str:
    """The absolute path of a readable ini file, or IniError saying what is wrong."""
    if not path:
        raise IniError("no ini file given")
    path = os.path.abspath(path)
    _stat_regular(path)
    return path


def _stat_regular(path: str) -> os.stat_result:
    """``path``'s stat if it is a regular file within :data:`MAX_FILE_BYTES`; IniError
    otherwise (a FIFO would block the read, a device never end it)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise IniError(f"{path}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise IniError(f"{path}: a loop of symbolic links") from None
        raise IniError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if stat.S_ISDIR(st.st_mode):
        raise IniError(f"{path}: is a directory, not an ini file")
    if not stat.S_ISREG(st.st_mode):
        raise IniError(f"{path}: is a {_file_kind(st.st_mode)}, not a regular file")
    if st.st_size > MAX_FILE_BYTES:
        raise IniError(f"{path}: {st.st_size} bytes, over the {MAX_FILE_BYTES // 1024} KiB limit")
    return st


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "FIFO (named pipe)"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return kind
    return "special file"


def read_limited(path: str) -> bytes:
    """A regular file's bytes, at most :data:`MAX_FILE_BYTES`; IniError otherwise. Opened
    without blocking and checked again once open: no FIFO swapped in after the check can
    hang the read, no growing file can exhaust memory."""
    _stat_regular(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise IniError(f"{path}: cannot read: {exc.strerror or exc}") from None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise IniError(f"{path}: not a regular file")
        try:
            data = file.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise IniError(f"{path}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise IniError(f"{path}: over the {MAX_FILE_BYTES // 1024} KiB limit")
    return data


def _read_text(path: str) -> str:
    """The file's text; IniError for anything uWSGI would choke on or we cannot read."""
    data = read_limited(path)
    if b"\x00" in data:
        raise IniError(f"{path}: binary data (NUL byte at offset {data.index(0)}), not an ini file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise IniError(f"{path}: not UTF-8 text (bad byte at offset {exc.start})") from None
    if not text.strip():
        raise IniError(f"{path}: file is empty")
    return text


def _load(
    state: _State, spec: str, section: str, origin: _Entry | None, resolved: str = ""
) -> None:
    """Read one file's section and add its options, loading includes on the spot."""
    path = spec if spec else (state.last_file or "")
    if not resolved:
        resolved = path if os.path.isabs(path) else os.path.join(state.cwd, path)
        resolved = os.path.normpath(resolved)
    loop_key = f"{os.path.realpath(resolved)}:{section}"
    if origin is not None and loop_key in state.stack:
        chain = " -> ".join(s.rsplit(":", 1)[0] for s in [*state.stack, loop_key])
        state.note_option(origin, f"include loop: {chain}")
        return
    try:
        if origin is not None:
            _check_file(resolved)
        text = _read_text(resolved)
        state.files.append(resolved)
        state.last_file = resolved
        magic = _magic_table(state, path, resolved, section)
        state.stack.append(loop_key)
        try:
            found = _parse(state, _magic_lines(text, magic), resolved, section)
        finally:
            state.stack.pop()
    except IniError as exc:
        if origin is None:
            raise
        state.note_option(origin, f"not read: {exc}")
        return
    if not found:
        message = f"{resolved}: no [{section}] section"
        if origin is None:
            raise IniError(message)
        state.note_option(origin, message)


def _parse(state: _State, lines: list[tuple[int, str]], path: str, section: str) -> bool:
    """Walk the lines as core/ini.c does; returns whether the section was found."""
    current = ""
    found = False
    for lineno, raw in lines:
        line = raw.strip(" \t\r")
        if not line or line[0] in ";#":
            continue
        if line[0] == "[":
            if not line.endswith("]"):
                raise IniError(
                    f"{path}:{lineno}: section header must end with ']' "
                    f"(uWSGI would read it as [{line[1:-1]}])"
                )
            current = line[1:-1]
            continue
        if current != section:
            continue
        found = True
        key, _, value = line.partition("=")
        _add(state, _Entry(key.rstrip(" \t\r"), value.strip(" \t\r"), path, lineno))
    return found


def _add(state: _State, entry: _Entry) -> None:
    """uWSGI's add_exported_option: option logic first, then immediate options."""
    if entry.key in _LOGIC_END:
        state.logic = None
        return
    if state.logic is not None:
        if entry.key != "else":
            written = _SENTINEL_RE.sub(r"%\1", entry.value)
            reason = f"inside '{state.logic}': uWSGI decides at start-up whether it applies"
            state.note(entry, f"{entry.key} = {written}", reason)
        return
    for match in _SENTINEL_RE.finditer(entry.value):
        letter = match.group(1)
        state.note(entry, f"%{letter}", f"magic variable %{letter} is {_RUNTIME_MAGIC[letter]}")
    state.entries.append(entry)
    if entry.key in _LOGIC_START:
        entry.configured = True
        state.logic = entry.key
    elif entry.key in ("include", "ini"):
        entry.configured = True
        _include(state, entry)
    elif entry.key in ("set", "set-placeholder", "set-ph"):
        entry.configured = True
        _set_placeholder(state, entry)
    elif entry.key == "inherit":
        entry.configured = True
        state.inherits.append(entry)


def _include(state: _State, entry: _Entry) -> None:
    """``include``/``ini``: uWSGI reads them at once, before any $() @() %() expansion."""
    value = entry.value
    for token in _EXPANSION_OPENERS:
        if token in value:
            reason = f"uWSGI opens include paths before expanding {token}...); use %d instead"
            state.note_option(entry, reason)
            return
    if "://" in value:
        state.note_option(entry, "remote or exec:// config is not read")
        return
    if _SENTINEL in value:  # a run-time magic variable, already noted
        return
    if entry.key == "include" and not value.endswith(".ini"):
        state.note_option(
            entry, "uWSGI loads only paths ending in .ini here (use ini = file:section)"
        )
        return
    path, section = _split_include(value)
    _load(state, path, section, origin=entry)


def _split_include(value: str) -> tuple[str, str]:
    """``other.ini:section`` or ``:section`` (same file) as core/ini.c splits them."""
    if ":" not in value:
        return value, DEFAULT_SECTION
    path, _, section = value.rpartition(":")
    return path, section or DEFAULT_SECTION


def _set_placeholder(state: _State, entry: _Entry) -> None:
    """``set = k=v`` adds an option; ``set-placeholder``/``set-ph`` a placeholder only."""
    name, eq, value = entry.value.partition("=")
    if not eq:
        state.note_option(entry, "expected name=value")
        return
    placeholder_only = entry.key != "set"
    state.entries.append(_Entry(name, value, entry.file, entry.lineno, placeholder_only))


def _load_inherited(state: _State, entry: _Entry) -> None:
    """``inherit`` is applied after the expansion passes, so its values stay as written."""
    first = len(state.entries)
    path, section = _split_include(entry.value)
    _load(state, path, section, origin=entry)
    for added in state.entries[first:]:
        for token in _EXPANSION_OPENERS:
            if token in added.value:
                state.note(added, token + "...)", "uWSGI does not expand inherited options")


# -- magic variables -------------------------------------------------------------------


def _magic_table(state: _State, given: str, path: str, section: str) -> dict[str, str]:
    """Per-file magic variables as config_magic_table_fill sets them."""
    # %p is the real path, except for a symlinked file, which uWSGI leaves as it is.
    full = path if os.path.islink(path) else os.path.realpath(path)
    name = os.path.basename(full)
    directory = full[: len(full) - len(name)]
    stem, dot, ext = name.rpartition(".")
    parts = [p for p in directory.split("/") if p]
    table = {
        "o": given if section == DEFAULT_SECTION else f"{given}:{section}",
        "p": full,
        "s": name,
        "d": directory,
        "n": stem if dot else name,
        "e": ext if dot else "",
        "c": parts[-1] if parts else "",
        "x": "" if section == DEFAULT_SECTION else section,
        "i": str(os.lstat(full).st_ino),
        "j": _djb33x_hex(full),
    }
    for index in range(10):
        table[str(index)] = parts[index] if index < len(parts) else ""
    if state.first_magic is None:
        state.first_magic = dict(table)
    for letter in "opsndcxeij":
        table[letter.upper()] = state.first_magic[letter]
    table.update({"%": "%", "(": "%(", "[": "\033"})
    return table


def _djb33x_hex(text: str) -> str:
    """``%j``: uWSGI's djb33x hash of the absolute path, as 8 upper-case hex digits."""
    value = 5381
    for byte in text.encode():
        value = (((value << 5) + value) ^ byte) & 0xFFFFFFFF
    return value.to_bytes(4, "little").hex().upper()


def _magic_lines(text: str, magic: Mapping[str, str]) -> list[tuple[int, str]]:
    """Replace magic variables in the raw text, keeping each line's first line number.

    As in magic_sub(), every ``%X`` is replaced, an unknown X by nothing; a ``%`` before
    a newline therefore joins two lines. Run-time-only variables become sentinels.
    """
    lines: list[tuple[int, str]] = []
    out: list[str] = []
    lineno = start = 1
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%" and i + 1 < len(text):
            letter = text[i + 1]
            if letter == "\n":
                lineno += 1
            out.append(_magic_value(letter, magic))
            i += 2
            continue
        if char == "\n":
            lines.append((start, "".join(out)))
            out = []
            lineno += 1
            start = lineno
        else:
            out.append(char)
        i += 1
    lines.append((start, "".join(out)))
    return lines


def _magic_value(letter: str, magic: Mapping[str, str]) -> str:
    if letter in magic:
        return magic[letter]
    if letter in _RUNTIME_MAGIC:
        return f"{_SENTINEL}{letter}{_SENTINEL}"
    return ""


# -- the $() @() %() passes -----------------------------------------------------------

_Hook = Callable[[_State, _Entry, str], "str | None"]


def _expand_all(state: _State) -> None:
    """uWSGI's three passes, in its order, over options not already configured."""
    passes: Sequence[tuple[str, _Hook]] = (("$", _env_hook), ("@", _file_hook), ("%", _ref_hook))
    for symbol, hook in passes:
        for entry in state.entries:
            if entry.configured:
                continue
            if symbol == "%" and _RUNTIME_PLACEHOLDER_KEYS.match(entry.key):
                continue
            entry.value = _expand(state, entry, symbol, hook)


def _closing_parens(value: str) -> dict[int, int]:
    """Index of each ``(`` -> index of the ``)`` that closes it (unclosed ones left out):
    one pass, so a value full of unclosed openers costs linear time, not quadratic."""
    closing: dict[int, int] = {}
    open_at: list[int] = []
    for index, char in enumerate(value):
        if char == "(":
            open_at.append(index)
        elif char == ")" and open_at:
            closing[open_at.pop()] = index
    return closing


def _find_token(
    value: str, symbol: str, start: int, closing: Mapping[int, int]
) -> tuple[int, int] | None:
    """Next ``X(...)`` from ``start`` with balanced parentheses: (open, close) indexes."""
    i = value.find(symbol + "(", start)
    while i != -1:
        j = closing.get(i + 1)
        if j is not None and j > i + 2:
            return i, j
        i = value.find(symbol + "(", i + 2)
    return None


def _expand(state: _State, entry: _Entry, symbol: str, hook: _Hook) -> str:
    """Replace tokens left to right, rescanning after each replacement like uWSGI."""
    value = entry.value
    if symbol + "(" not in value:
        return value
    start = replaced = 0
    closing = _closing_parens(value)
    while (found := _find_token(value, symbol, start, closing)) is not None:
        i, j = found
        replacement = hook(state, entry, value[i + 2 : j])
        if replacement is None:
            start = j + 1
            continue
        replaced += 1
        if replaced > _MAX_EXPANSIONS:
            state.note(entry, value[i : j + 1], "expands without end (a placeholder loop)")
            return value
        value = value[:i] + replacement + value[j + 1 :]
        closing = _closing_parens(value)
        start = 0
    return value


def _env_hook(state: _State, entry: _Entry, name: str) -> str | None:
    value = state.env.get(name)
    if value is None:
        reason = "environment variable not set here"
        if ":-" in name or "-" in name:
            reason += " (uWSGI 2.0 has no $(VAR:-default) syntax)"
        state.note(entry, f"$({name})", reason)
    return value


def _file_hook(state: _State, entry: _Entry, name: str) -> str | None:
    if "://" in name:
        state.note(entry, f"@({name})", "not read: would fetch or run something")
        return None
    path = name if os.path.isabs(name) else os.path.join(state.cwd, name)
    try:
        data = read_limited(path).decode("utf-8")
    except IniError as exc:
        state.note(entry, f"@({name})", f"cannot read {exc}")
        return None
    except UnicodeDecodeError:
        state.note(entry, f"@({name})", f"cannot read {path}: not UTF-8")
        return None
    # uwsgi_at_file_read drops one trailing newline or carriage return.
    return data[:-1] if data.endswith(("\n", "\r")) else data


def _ref_hook(state: _State, entry: _Entry, name: str) -> str | None:
    if " " in name:
        return _ref_expression(state, entry, name)
    target = _referred(state, entry, name)
    return None if target is None else target.value


def _referred(state: _State, entry: _Entry, key: str) -> _Entry | None:
    """uwsgi_get_exported_opt: the *first* definition, unlike the last-wins setting;
    a missing or unresolved one is noted on ``entry``."""
    target = next((e for e in state.entries if e.key == key), None)
    if target is None:
        state.note(entry, f"%({key})", "no such option in this file or its includes")
    elif target.unresolved:
        state.note(entry, f"%({key})", f"refers to '{key}', which is unresolved")
    return target


def _ref_expression(state: _State, entry: _Entry, expr: str) -> str:
    """``%(processes cpu + 2)``: uwsgi_manage_placeholder's concat/arithmetic pipeline."""
    current: str | None = None
    op = "concat"
    ops = {"+": "sum", "-": "sub", "*": "mul", "/": "div"}
    for token in expr.split():
        if token in ops:
            op = ops[token]
            continue
        if token in ("++", "--"):
            if current is not None:
                current = str(_atoi(current) + (1 if token == "++" else -1))
            op = "concat"
            continue
        value = token if re.fullmatch(r"-?\d+", token) else _ref_value(state, entry, token)
        current = _apply(op, current, value)
        op = "concat"
    return current or ""


def _ref_value(state: _State, entry: _Entry, key: str) -> str:
    target = _referred(state, entry, key)
    return "" if target is None else target.value


def _apply(op: str, current: str | None, value: str) -> str:
    if op == "concat":
        return (current or "") + value
    left, right = _atoi(current or ""), _atoi(value)
    if op == "sum":
        return str(left + right)
    if op == "sub":
        return str(left - right)
    if op == "mul":
        return str(left * right)
    return str(int(left / right) if right else 0)


def _atoi(text: str) -> int:
    """C's atoi: 0 when there is no number."""
    return parse_int(text) or 0


# -- what the audit needs -------------------------------------------------------------


def parse_bool(value: str) -> bool:
    """uwsgi_opt_true: false/off/no (any case) and 0 are False; anything else, even an
    empty value or a bare flag, is True."""
    return not (value.lower() in ("false", "off", "no") or value == "0")


def parse_int(value: str) -> int | None:
    """An integer option read like uWSGI's atoi (``4 ; four`` is 4), but ``None`` when
    there is no number at all, where atoi would silently read 0."""
    match = re.match(r"\s*([+-]?\d+)", value)
    return int(match.group(1)) if match else None


@dataclass(frozen=True)
class ServedApp:
    """One WSGI app the config tells uWSGI's Python plugin to load."""

    option: str
    """``module``, ``wsgi-file`` or ``mount`` (aliases folded)."""
    spec: str
    """The value as resolved, e.g. ``app:create_app()`` or ``/srv/app/wsgi.py``."""
    module: str | None
    """Dotted module name, when loaded by module name."""
    file: str | None
    """Absolute path, when loaded from a file."""
    callable: str | None
    """Attribute uWSGI looks up (``application`` by default); may end with ``()``."""
    mountpoint: str | None = None


@dataclass(frozen=True)
class UwsgiSettings:
    """The options that decide how uWSGI forks the app. ``None`` means unresolved, unless
    a field says otherwise."""

    master: bool | None
    master_implied_by: str | None
    """An option that turns the master on by itself (e.g. ``touch-reload``)."""
    processes: int | None
    """Workers; ``None`` when not set (uWSGI then runs one) or unresolved."""
    processes_set: bool
    lazy_apps: bool | None
    lazy_key: str | None
    """Which option made it lazy: ``lazy-apps`` or ``lazy``."""
    enable_threads: bool | None
    """``None`` when not set."""
    threads: int | None
    py_call_osafterfork: bool | None
    py_call_uwsgi_fork_hooks: bool | None
    """uWSGI 2.0.21+: the master runs Python's ``os.register_at_fork`` hooks around each
    worker fork (before/after_in_parent), and workers their after_in_child ones."""
    max_requests: int | None
    single_interpreter: bool | None
    """``None`` when not set: uWSGI then gives every ``mount`` after the first app its
    own sub-interpreter (``core/uwsgi.c``, ``plugins/python/pyloader.c``)."""
    served: tuple[ServedApp, ...]
    unresolved_options: tuple[str, ...]
    """Audited options whose value could not be resolved."""
    misspelt: tuple[tuple[str, str], ...]
    """(key as written, the option it was probably meant to be): uWSGI ignores these."""
    inline_comments: tuple[IniOption, ...]
    """Audited options whose value holds `` ;`` or `` #``: uWSGI has no inline comments."""
    process_wide: IniOption | None = None
    """The ``import = flask_uwsgi_dbfix.auto`` line (any of uWSGI's import options) that
    switches the process-wide mode on in the master."""
    process_wide_env: IniOption | None = None
    """The last ``env = FLASK_UWSGI_DBFIX=...`` line: its value switches the mode off, or
    stops uWSGI when it is neither on nor off."""
    mules: int = 0
    """``mules = N`` plus one per ``mule = file``: forked from the master like workers."""
    spooler_processes: int = 0
    """``spooler-processes`` (default 1) per ``spooler`` directory; 0 without a spooler."""


AUTO_MODULE = "flask_uwsgi_dbfix.auto"
ENV_VAR = "FLASK_UWSGI_DBFIX"
IMPORT_OPTIONS = (
    "import",
    "pyimport",
    "py-import",
    "python-import",
    "shared-import",
    "shared-pyimport",
    "shared-py-import",
    "shared-python-import",
)
"""uWSGI's Python plugin imports each of these in the master before it loads the app."""

AUDITED = (
    "master",
    "processes",
    "workers",
    "lazy-apps",
    "lazy",
    "enable-threads",
    "threads",
    "py-call-osafterfork",
    "py-call-uwsgi-fork-hooks",
    "max-requests",
    "single-interpreter",
    "mules",
    "spooler-processes",
    "module",
    "wsgi",
    "wsgi-file",
    "file",
    "callable",
    "mount",
    "chdir",
)


class _Reader:
    """Last-wins lookups over an ini that remember what could not be resolved."""

    def __init__(self, ini: UwsgiIni) -> None:
        self.ini = ini
        self.unresolved: list[str] = []

    def text(self, *keys: str) -> str | None:
        option = self.ini.last(*keys)
        if option is not None and option.value is None:
            self.unresolved.append(keys[0])
        return None if option is None else option.value

    def flag(self, *keys: str) -> bool | None:
        value = self.text(*keys)
        return None if value is None else parse_bool(value)

    def number(self, *keys: str) -> int | None:
        value = self.text(*keys)
        if value is None:
            return None
        number = parse_int(value)
        if number is None:
            self.unresolved.append(keys[0])
        return number


def settings_from_ini(ini: UwsgiIni) -> UwsgiSettings:
    """Fold the ini's options into what uWSGI would end up with."""
    read = _Reader(ini)
    master_set = ini.last("master") is not None
    implied = None if master_set else _master_implied_by(ini)
    master = read.flag("master") if master_set else implied is not None
    lazy_apps, lazy = read.flag("lazy-apps"), read.flag("lazy")
    lazy_key = "lazy-apps" if lazy_apps else "lazy" if lazy else None
    return UwsgiSettings(
        master=master,
        master_implied_by=implied,
        processes=read.number("processes", "workers"),
        processes_set=ini.last("processes", "workers") is not None,
        lazy_apps=True if lazy_key else None if _lazy_unresolved(ini) else False,
        lazy_key=lazy_key,
        enable_threads=read.flag("enable-threads"),
        threads=read.number("threads"),
        py_call_osafterfork=read.flag("py-call-osafterfork"),
        py_call_uwsgi_fork_hooks=read.flag("py-call-uwsgi-fork-hooks"),
        max_requests=read.number("max-requests"),
        single_interpreter=read.flag("single-interpreter"),
        served=_served_apps(ini, read),
        unresolved_options=_unresolved_options(ini, read.unresolved),
        misspelt=_misspelt(ini),
        inline_comments=tuple(
            o for o in ini.options if o.key in AUDITED and o.value and _COMMENT.search(o.value)
        ),
        process_wide=next(
            (o for o in ini.all(*IMPORT_OPTIONS) if (o.value or "").strip() == AUTO_MODULE), None
        ),
        process_wide_env=next(
            (o for o in reversed(ini.all("env")) if (o.value or "").startswith(f"{ENV_VAR}=")),
            None,
        ),
        mules=(read.number("mules") or 0) + len(ini.all("mule")),
        spooler_processes=len(ini.all("spooler")) * (read.number("spooler-processes") or 1),
    )


def _master_implied_by(ini: UwsgiIni) -> str | None:
    """The first option that turns the master on without ``master = true``."""
    return next((o.key for o in ini.options if o.key in _MASTER_IMPLYING), None)


def _unresolved_options(ini: UwsgiIni, found: list[str]) -> tuple[str, ...]:
    """Audited options whose value is unknown, including ones inside option logic."""
    keys = found + [u.key for u in ini.unresolved if u.key in AUDITED]
    return tuple(dict.fromkeys(keys))


def _lazy_unresolved(ini: UwsgiIni) -> bool:
    return any(o is not None and o.value is None for o in (ini.last("lazy-apps"), ini.last("lazy")))


def _served_apps(ini: UwsgiIni, read: _Reader) -> tuple[ServedApp, ...]:
    """The apps uWSGI's Python plugin would load: mounts, then module, then wsgi-file."""
    callable_name = read.text("callable")
    base = _app_dir(ini, read)
    mounts = ini.all("mount")
    served = [_mount(o.value, base, callable_name) for o in mounts if o.value]
    if any(o.value is None for o in mounts):
        read.unresolved.append("mount")
    module = read.text("module", "wsgi")
    if module:
        served.append(_module_app("module", module, callable_name))
    wsgi_file = read.text("wsgi-file", "file")
    if wsgi_file:
        served.append(_file_app("wsgi-file", wsgi_file, base, callable_name))
    return tuple(served)


def _app_dir(ini: UwsgiIni, read: _Reader) -> str:
    """Where relative app files are found: ``chdir`` if set, else the assumed cwd."""
    chdir = read.text("chdir")
    base = os.path.dirname(ini.path)
    return os.path.join(base, chdir) if chdir else base


def _module_app(option: str, spec: str, callable_name: str | None) -> ServedApp:
    module, colon, attr = spec.partition(":")
    name = attr if colon else (callable_name or "application")
    return ServedApp(option, spec, module, None, name)


def _file_app(option: str, spec: str, base: str, callable_name: str | None) -> ServedApp:
    path = os.path.normpath(os.path.join(base, spec))
    return ServedApp(option, spec, None, path, callable_name or "application")


def _mount(value: str, base: str, callable_name: str | None) -> ServedApp:
    """``mount = /mp=app``: a .py/.wsgi file, or module:callable (uwsgi_mount_loader)."""
    mountpoint, _, target = value.partition("=")
    if target.endswith((".py", ".wsgi")):
        app = _file_app("mount", target, base, callable_name)
    elif ":" in target:
        app = _module_app("mount", target, callable_name)
    else:
        app = ServedApp("mount", target, None, None, None)
    return dataclasses.replace(app, mountpoint=mountpoint)


def _misspelt(ini: UwsgiIni) -> tuple[tuple[str, str], ...]:
    """Audited options written with underscores: uWSGI's ini keys are exact, so
    ``lazy_apps = true`` is silently ignored."""
    found = []
    for option in ini.options:
        canonical = option.key.replace("_", "-")
        if canonical != option.key and canonical in AUDITED:
            found.append((option.key, canonical))
    return tuple(dict.fromkeys(found))
