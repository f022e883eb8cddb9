"""What merely having flask_uwsgi_dbfix costs, side by side, from fresh interpreters.

Each figure comes from fresh interpreters, so an import made for one variant cannot leak
into another.

1. ``engine.connect().close()`` on an engine nobody registered (a ``NullPool`` and a
   ``QueuePool`` engine on a SQLite file), in these variants:
     plain       SQLAlchemy alone, the package never imported;
     import      ``import flask_uwsgi_dbfix`` and nothing else;
     other_app   the package imported and ``FlaskDBFix(app)`` run on *another* Flask app
                 with its own Flask-SQLAlchemy engine: the fix is on in the process, not
                 for this engine;
     other_app_bare  the same other app without the package (c0): a control that tells
                 what Flask and Flask-SQLAlchemy in the process cost from what FlaskDBFix does.
   The target for import and other_app: equal to plain within noise.
2. The same engines passed through ``register()`` (variant ``registered``), and made while
   the process-wide mode is on (``import flask_uwsgi_dbfix.auto``, variant ``process_wide``),
   each against plain
   and against unregistered twins timed in turn in the same interpreter (interpreters differ
   by more than the guard costs). On a QueuePool the overhead is the pid guard on checkout
   (target <= 160 ns); on a NullPool every checkout opens a new DBAPI connection, so it is
   the cost of recording where a connection was opened (target <= 1.5 us per connection).
3. ``python -X importtime -c "import flask_uwsgi_dbfix"``: the package's cumulative time,
   which of its modules and which third-party packages it loads; and the same import after
   ``import flask, sqlalchemy``, i.e. its own share in an app that has those anyway.
4. Facts: does a bare import add a listener to a fresh pool or engine, or call
   ``os.register_at_fork``; does ``FlaskDBFix`` on one app touch an engine it does not
   manage.

Each round starts one fresh interpreter per variant, the variants taking turns in a
rotating order, so a slow stretch of the shared machine hits all of them. In each
interpreter the engines are warmed up, then take turns over 10 blocks of calls/10
connects each; the round's figure is an engine's best block (a block that another job
interrupted says nothing about the package). Overhead and ratio are taken against plain
within the same round; we print their median [p25..p75] over rounds. Only the public API
is used: ``import flask_uwsgi_dbfix``, ``register()`` and ``FlaskDBFix``.

    python -m benchmarks.import_cost [--rounds 13] [--calls 2000] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Any

# Only the standard library up here: the children run this module too, and the plain
# variant must import neither the package nor Flask.

PACKAGE = "flask_uwsgi_dbfix"
ROOT = Path(__file__).resolve().parent.parent
POOLS = ("NullPool", "QueuePool")
VARIANTS = ("plain", "import", "other_app_bare", "other_app", "registered", "process_wide")
LABELS = {
    "plain": "(a) plain SQLAlchemy",
    "import": "(b) import flask_uwsgi_dbfix",
    "other_app_bare": "(c0) other app, no FlaskDBFix",
    "other_app": "(c) + FlaskDBFix(other app)",
    "registered": "(d) register(engine)",
    "registered_in_process": "(d) vs twin, same interpreter",
    "recording": "(e) of it: the opener's line",
    "process_wide": "(f) process-wide mode",
    "process_wide_in_process": "(f) vs twin, same interpreter",
}
TARGET_NS = {"QueuePool": 160}
"""The most ``register()`` may add per checkout of a pooled connection: the guard."""
RECORDING_TARGET_NS = 1500
"""The most recording which code opened a connection may cost, per new connection."""
_FINDS_ORIGIN = "_origin_above"
"""The function of ``flask_uwsgi_dbfix.stamps`` that finds the opener's line."""
NO_ORIGIN = "no origin"
"""A registered NullPool engine timed with the stack walk that finds the opener's line
switched off: the difference to the registered one is what recording that line costs."""
BLOCKS = 10
CONTROL = "control"
CHILD_TIMEOUT_S = 120
WATCHED_IMPORTS = (f"{PACKAGE}.check", "flask_sqlalchemy", "click", "flask", "sqlalchemy")
_IMPORTTIME_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| ( *)(\S+)\s*$")


class ChildFailed(RuntimeError):
    """A measuring interpreter exited non-zero: its stderr says why (often a broken import)."""


# --- children: each runs in a fresh interpreter --------------------------------------------


def _package() -> Any:
    """The public package, imported here and only here, so the plain variant never has it."""
    import flask_uwsgi_dbfix

    return flask_uwsgi_dbfix


def _other_app(package: Any, db_path: str) -> None:
    """A second app, as a real one would be: Flask-SQLAlchemy, FlaskDBFix (unless package
    is None: the control that tells Flask's own cost from the package's), one query."""
    from flask import Flask
    from flask_sqlalchemy import SQLAlchemy
    from sqlalchemy import text

    app = Flask("other_app")
    app.config["SQLALCHEMY_DATABASE_URI"] = f"sqlite:///{db_path}"
    db = SQLAlchemy(app)
    if package is not None:
        package.FlaskDBFix(app)
    with app.app_context():
        db.session.execute(text("SELECT 1"))
        db.session.remove()


def _engines(db_path: str) -> dict[str, Any]:
    from sqlalchemy import create_engine
    from sqlalchemy.pool import NullPool, QueuePool

    classes = {"NullPool": NullPool, "QueuePool": QueuePool}
    return {name: create_engine(f"sqlite:///{db_path}", poolclass=classes[name]) for name in POOLS}


def child_timing(variant: str, tmp: str, calls: int) -> dict[str, Any]:
    """ns per ``engine.connect().close()`` for each pool, in this interpreter's variant."""
    import gc

    package: Any = _package() if variant not in ("plain", "other_app_bare") else None
    if variant in ("other_app", "other_app_bare"):
        _other_app(package, os.path.join(tmp, "other.db"))
    path = os.path.join(tmp, "bench.db")
    engines = _engines(path)
    if variant == "registered":
        for name, engine in engines.items():
            package.register(engine, name=f"bench_{name.lower()}")
        # Unregistered twins, timed in turn with them: the overhead of register() without
        # the process-to-process spread (often more than 160 ns) in it.
        engines |= {f"{name} {CONTROL}": engine for name, engine in _engines(path).items()}
        no_origin = _engines(path)["NullPool"]
        package.register(no_origin, name="bench_no_origin")
        engines[f"NullPool {NO_ORIGIN}"] = no_origin
    if variant == "process_wide":
        from importlib import import_module

        import_module(f"{PACKAGE}.auto")  # the switch: every engine made from now on
        engines = _engines(path)
        # Twins made with the mode off again (engines already managed stay managed).
        import_module(f"{PACKAGE}.process_wide").switch_off()
        engines |= {f"{name} {CONTROL}": engine for name, engine in _engines(path).items()}
    from importlib import import_module

    stamps = import_module(f"{PACKAGE}.stamps") if variant == "registered" else None
    walk = getattr(stamps, _FINDS_ORIGIN, None)
    size = max(1, calls // BLOCKS)
    loops = {name: engine.connect for name, engine in engines.items()}
    for connect in loops.values():  # warm-up; fills the QueuePool
        for _ in range(min(calls, 500)):
            connect().close()
    gc.collect()
    names = list(loops)
    blocks: dict[str, list[float]] = {name: [] for name in names}
    clock = time.perf_counter_ns
    for b in range(BLOCKS):
        for name in names[b % len(names) :] + names[: b % len(names)]:
            connect = loops[name]
            if name.endswith(NO_ORIGIN):
                setattr(stamps, _FINDS_ORIGIN, lambda depth: None)
            t0 = clock()
            for _ in range(size):
                connect().close()
            blocks[name].append((clock() - t0) / size)
            if name.endswith(NO_ORIGIN):
                setattr(stamps, _FINDS_ORIGIN, walk)
    for engine in engines.values():
        engine.dispose()
    return {"ns_per_call": {n: min(v) for n, v in blocks.items()}, "blocks_ns": blocks}


def _modules_of(fn: object, depth: int = 0) -> set[str]:
    """The modules a listener comes from, looking through bound methods, partials, wrappers
    and closures (SQLAlchemy wraps some listeners in functions of its own)."""
    found: set[str] = set()
    for candidate in (fn, *(getattr(fn, a, None) for a in ("__func__", "func", "__wrapped__"))):
        module = getattr(candidate, "__module__", None)
        if isinstance(module, str):
            found.add(module)
    owner = getattr(fn, "__self__", None)
    if owner is not None and not isinstance(owner, type(sys)):
        found.add(type(owner).__module__)
    if depth < 3:
        for cell in getattr(fn, "__closure__", None) or ():
            try:
                value = cell.cell_contents
            except ValueError:  # an empty cell
                continue
            if callable(value):
                found |= _modules_of(value, depth + 1)
    return found


def _own(module: str) -> bool:
    return module == PACKAGE or module.startswith(PACKAGE + ".")


def _package_listeners(engines: Iterable[Any]) -> list[str]:
    """Every listener from the package on these engines and their pools, instance- or
    class-level (iterating an instance's dispatch yields both)."""
    found: list[str] = []
    for engine in engines:
        for where, dispatch in (("pool", engine.pool.dispatch), ("engine", engine.dispatch)):
            for event in getattr(dispatch, "_event_names", ()):
                for fn in getattr(dispatch, event):
                    modules = sorted(m for m in _modules_of(fn) if _own(m))
                    if modules:
                        found.append(f"{type(engine.pool).__name__} {where}.{event}: {modules[0]}")
    return sorted(set(found))


def child_facts(tmp: str) -> dict[str, Any]:
    """What the import, FlaskDBFix on another app, and register() leave behind."""
    fork_hooks: list[str] = []
    real = os.register_at_fork

    def spy(**hooks: Callable[[], object]) -> None:
        caller = sys._getframe(1).f_globals.get("__name__", "?")
        fork_hooks.append(f"{caller}: {', '.join(sorted(hooks))}")
        real(**hooks)

    setattr(os, "register_at_fork", spy)  # noqa: B010 (mypy will not assign to a function)
    before = set(sys.modules)
    facts: dict[str, Any] = {}

    def step(name: str, do: Callable[[], list[Any]]) -> None:
        hooks_before = len(fork_hooks)
        checked = do()
        facts[name] = {
            "listeners": _package_listeners(checked),
            "register_at_fork_by_package": [
                h for h in fork_hooks[hooks_before:] if _own(h.split(":", 1)[0])
            ],
            "register_at_fork_by_others": [
                h for h in fork_hooks[hooks_before:] if not _own(h.split(":", 1)[0])
            ],
        }

    package: Any = None

    def bare_import() -> list[Any]:
        nonlocal package
        package = _package()
        facts["modules_loaded_by_import"] = sorted(set(sys.modules) - before)
        return list(_engines(os.path.join(tmp, "facts.db")).values())

    def other_app() -> list[Any]:
        _other_app(package, os.path.join(tmp, "facts_other.db"))
        return list(_engines(os.path.join(tmp, "facts.db")).values())

    def registered() -> list[Any]:
        engines = list(_engines(os.path.join(tmp, "facts.db")).values())
        for i, engine in enumerate(engines):
            package.register(engine, name=f"facts_{i}")
        return engines

    step("import", bare_import)
    step("other_app", other_app)
    step("registered", registered)
    return facts


# --- the parent: runs the children, interleaved ----------------------------------------------


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    return env


def _run(args: list[str], what: str) -> subprocess.CompletedProcess[str]:
    """One fresh interpreter. On SIGTERM or Ctrl-C, subprocess.run kills it before raising."""
    done = subprocess.run(
        [sys.executable, *args],
        cwd=ROOT,
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
        check=False,
    )
    if done.returncode != 0:
        raise ChildFailed(f"{what}: exit {done.returncode}\n{done.stderr[-3000:]}")
    return done


def _child(what: str, *args: str) -> dict[str, Any]:
    done = _run(["-m", "benchmarks.import_cost", "--child", what, *args], what)
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q * (len(s) - 1))))]


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "median": statistics.median(values),
        "p25": _pct(values, 0.25),
        "p75": _pct(values, 0.75),
    }


def _paired(values: list[float], base: list[float]) -> dict[str, Any]:
    """Overhead and ratio of each round's value against the base of the same round."""
    pairs = list(zip(values, base, strict=True))
    return {
        "overhead_ns": _spread([v - b for v, b in pairs]),
        "ratio": _spread([v / b for v, b in pairs]),
    }


def time_connects(rounds: int, calls: int, tmp: str) -> dict[str, Any]:
    samples: dict[str, dict[str, list[float]]] = {v: {} for v in VARIANTS}
    for r in range(rounds):
        order = VARIANTS[r % len(VARIANTS) :] + VARIANTS[: r % len(VARIANTS)]
        for variant in order:
            got = _child("timing", "--variant", variant, "--tmp", tmp, "--calls", str(calls))
            for engine, ns in got["ns_per_call"].items():
                samples[variant].setdefault(engine, []).append(ns)
    summary: dict[str, dict[str, Any]] = {}
    for pool in POOLS:
        plain = samples["plain"][pool]
        summary[pool] = {}
        for variant in VARIANTS:
            values = samples[variant][pool]
            entry: dict[str, Any] = {"ns": _spread(values)}
            if variant != "plain":
                entry |= _paired(values, plain)
            if variant == "other_app":
                entry["vs_other_app_bare"] = _paired(values, samples["other_app_bare"][pool])
            summary[pool][variant] = entry
        control = samples["registered"][f"{pool} {CONTROL}"]
        summary[pool]["registered_in_process"] = {
            "ns": _spread(control),
            **_paired(samples["registered"][pool], control),
        }
        twin = samples["process_wide"][f"{pool} {CONTROL}"]
        summary[pool]["process_wide_in_process"] = {
            "ns": _spread(twin),
            **_paired(samples["process_wide"][pool], twin),
        }
    no_origin = samples["registered"][f"NullPool {NO_ORIGIN}"]
    summary["NullPool"]["recording"] = {
        "ns": _spread(no_origin),
        **_paired(samples["registered"]["NullPool"], no_origin),
    }
    return {"samples_ns": samples, "summary": summary}


def _parse_importtime(stderr: str) -> list[tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, module) per line of ``-X importtime``, in order."""
    lines = []
    for line in stderr.splitlines():
        m = _IMPORTTIME_LINE.match(line)
        if m:
            lines.append((int(m[1]), int(m[2]), len(m[3]) // 2, m[4]))
    return lines


def _subtree(
    lines: list[tuple[int, int, int, str]], name: str
) -> tuple[int, dict[str, int]] | None:
    """The cumulative time of ``name`` and the self time of each module it loaded (itself
    included): importtime prints children, indented deeper, just before their parent."""
    for i, (_, cumulative, depth, module) in enumerate(lines):
        if module == name:
            j = i - 1
            while j >= 0 and lines[j][2] > depth:
                j -= 1
            return cumulative, {m: s for s, _, _, m in lines[j + 1 : i + 1]}
    return None


def _grouper() -> Callable[[str], str]:
    """Module name -> "own", "stdlib", the third-party distribution's top-level name, or
    "other" (neither, e.g. a namespace probe); from metadata, importing nothing."""
    from importlib import metadata

    installed = metadata.packages_distributions()

    def group(module: str) -> str:
        top = module.split(".")[0]
        if _own(module):
            return "own"
        if top in sys.stdlib_module_names or top.startswith("_sysconfigdata"):
            return "stdlib"
        return top if top in installed else "other"

    return group


def time_imports(repeats: int) -> dict[str, Any]:
    """The package's import alone and after ``import flask, sqlalchemy``, interleaved."""
    commands = {
        "alone": f"import {PACKAGE}",
        "after_flask_sqlalchemy": f"import flask, sqlalchemy; import {PACKAGE}",
    }
    runs: dict[str, list[dict[str, Any]]] = {kind: [] for kind in commands}
    base: list[float] = []
    editable: list[float] = []
    for r in range(repeats + 1):  # the first round only warms the disk and bytecode caches
        for kind, code in commands.items():
            done = _run(["-X", "importtime", "-c", code], f"importtime {kind}")
            lines = _parse_importtime(done.stderr)
            tree = _subtree(lines, PACKAGE)
            if tree is None:
                raise ChildFailed(
                    f"importtime {kind}: no line for {PACKAGE}\n{done.stderr[-2000:]}"
                )
            if r == 0:
                continue
            cumulative, modules = tree
            runs[kind].append({"cumulative_us": cumulative, "self_us": modules})
            if kind == "after_flask_sqlalchemy":
                base.append(
                    sum(c for _, c, d, m in lines if d == 0 and m in ("flask", "sqlalchemy"))
                )
            editable += [c for _, c, d, m in lines if m.startswith("__editable__")]
    summary: dict[str, Any] = {}
    group_of = _grouper()
    for kind, got in runs.items():
        groups: dict[str, list[float]] = {}
        for run in got:
            sums: dict[str, float] = {}
            for module, us in run["self_us"].items():
                sums[group_of(module)] = sums.get(group_of(module), 0) + us
            for group in sums.keys() | groups.keys():
                groups.setdefault(group, []).append(sums.get(group, 0))
        loaded = sorted({m for run in got for m in run["self_us"]})
        summary[kind] = {
            "cumulative_us": _spread([run["cumulative_us"] for run in got]),
            "self_us_by_group": dict(
                sorted(
                    ((g, statistics.median(v)) for g, v in groups.items()),
                    key=lambda item: ({"own": 0, "stdlib": 1}.get(item[0], 2), -item[1]),
                )
            ),
            "own_modules": [m for m in loaded if _own(m)],
            "third_party": sorted({group_of(m) for m in loaded} - {"own", "stdlib", "other"}),
            "watched_loaded": {
                w: any(m == w or m.startswith(w + ".") for m in loaded) for w in WATCHED_IMPORTS
            },
        }
    summary["flask_sqlalchemy_cumulative_us"] = _spread(base)
    if editable:
        summary["editable_finder_at_startup_us"] = statistics.median(editable)
    return {"repeats": repeats, "runs": runs, "summary": summary}


def _versions() -> dict[str, str]:
    """Read from the installed metadata, so the parent imports none of them."""
    from importlib import metadata

    found = {"python": sys.version.split()[0]}
    for dist in ("SQLAlchemy", "Flask", "Flask-SQLAlchemy", "flask-uwsgi-dbfix"):
        try:
            found[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[dist] = "not installed"
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", PACKAGE],
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
        found["commit"] = (head or f"{ROOT}, not a git checkout") + (
            f" + uncommitted changes in {PACKAGE}/" if dirty else ""
        )
    except OSError:
        found["commit"] = "unknown"
    return found


def run(rounds: int, calls: int, import_repeats: int) -> dict[str, Any]:
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        facts = _child("facts", "--tmp", tmp)  # also compiles every module's bytecode
        imports = time_imports(import_repeats)
        connects = time_connects(rounds, calls, tmp)
    return {
        "versions": _versions(),
        "rounds": rounds,
        "calls_per_round": calls,
        "blocks": BLOCKS,
        "target_ns": TARGET_NS,
        "connect": connects,
        "import_time": imports,
        "facts": facts,
        "seconds": round(time.monotonic() - started, 1),
    }


# --- the report -----------------------------------------------------------------------------


def _fmt(s: dict[str, float], spec: str = ".0f", sign: str = "") -> str:
    f = sign + spec

    def num(x: float) -> str:
        return format(round(x) if spec == ".0f" else x, f)  # an int: no "-0"

    return f"{num(s['median'])} [{num(s['p25'])}..{num(s['p75'])}]"


def _verdict(pool: str, variant: str, entry: dict[str, Any]) -> str:
    o = entry["overhead_ns"]
    if variant in ("registered", "process_wide"):
        return "across interpreters: see the next row"
    if variant.endswith("_in_process") and pool in TARGET_NS:
        met = "met" if o["median"] <= TARGET_NS[pool] else "NOT met"
        return f"<= {TARGET_NS[pool]} ns: {met}"
    if variant.endswith("_in_process"):
        return "everything per new connection (guard, listener, records): no target"
    if variant == "recording":
        met = "met" if o["median"] <= RECORDING_TARGET_NS else "NOT met"
        return f"<= {RECORDING_TARGET_NS} ns per new connection: {met}"
    if o["p25"] <= 0 <= o["p75"]:
        verdict = "= plain: met, within noise"
    elif o["p75"] < 0:
        verdict = f"= plain: met, faster ({entry['ratio']['median'] - 1:+.1%}, p25..p75 < 0)"
    else:
        verdict = f"= plain: NOT met, {entry['ratio']['median'] - 1:+.1%} (p25..p75 > 0)"
    if "vs_other_app_bare" in entry:
        verdict += f"; vs (c0): {_fmt(entry['vs_other_app_bare']['overhead_ns'], sign='+')} ns"
    return verdict


def _yes(items: list[str]) -> str:
    return ("yes: " + "; ".join(items)) if items else "no"


def format_report(data: dict[str, Any]) -> str:
    v = data["versions"]
    lines = [
        f"What having {PACKAGE} costs ({v['commit']}; Python {v['python']}, SQLAlchemy"
        f" {v['SQLAlchemy']}, Flask {v['Flask']}, Flask-SQLAlchemy {v['Flask-SQLAlchemy']})",
        "",
        "engine.connect().close() on a SQLite file, ns per call: each round one fresh"
        f" interpreter per variant, best of {data['blocks']} blocks of"
        f" {max(1, data['calls_per_round'] // data['blocks'])}; median [p25..p75] over"
        f" {data['rounds']} interleaved rounds; overhead and ratio against plain in the same round",
        f"  {'pool':9s} {'variant':29s} {'ns/call':>22s} {'overhead ns':>20s}"
        f" {'ratio':>20s}   target",
    ]
    for pool, entries in data["connect"]["summary"].items():
        for variant, e in entries.items():
            line = f"  {pool:9s} {LABELS[variant]:29s} {_fmt(e['ns']):>22s}"
            if "overhead_ns" in e:
                line += (
                    f" {_fmt(e['overhead_ns'], sign='+'):>20s} {_fmt(e['ratio'], '.3f'):>20s}"
                    f"   {_verdict(pool, variant, e)}"
                )
            lines.append(line)

    imp = data["import_time"]["summary"]
    lines += [
        "",
        f"import time (-X importtime), us: median [p25..p75] of {data['import_time']['repeats']}"
        " fresh interpreters; 'self' splits the cumulative time by who loaded what",
    ]
    rows = {
        "alone": f"import {PACKAGE}",
        "after_flask_sqlalchemy": "  after import flask, sqlalchemy",
    }
    for kind, label in rows.items():
        s = imp[kind]
        split = ", ".join(f"{g} {us:.0f}" for g, us in s["self_us_by_group"].items())
        lines.append(f"  {label:34s} {_fmt(s['cumulative_us']):>22s}   self: {split}")
    lines.append(
        f"  {'import flask, sqlalchemy (scale)':34s}"
        f" {_fmt(imp['flask_sqlalchemy_cumulative_us']):>22s}"
    )
    alone = imp["alone"]
    lines.append(f"  its modules loaded by the import: {', '.join(alone['own_modules'])}")
    lines.append(
        "  third-party packages it loads: "
        + (", ".join(alone["third_party"]) or "none")
        + "; after flask, sqlalchemy: "
        + (", ".join(imp["after_flask_sqlalchemy"]["third_party"]) or "none")
    )
    lines.append(
        "  loads "
        + ", ".join(f"{w}: {'yes' if got else 'no'}" for w, got in alone["watched_loaded"].items())
    )
    if "editable_finder_at_startup_us" in imp:
        lines.append(
            f"  (every interpreter of this venv imports the editable install's finder at start-up,"
            f" before any import: {imp['editable_finder_at_startup_us']:.0f} us; `pip install -e`"
            " only, not counted above)"
        )

    f = data["facts"]
    lines += [
        "",
        "facts (one fresh interpreter; listeners from a module under the package on fresh"
        " NullPool/QueuePool engines and their pools; os.register_at_fork calls from it)",
        "  bare import added a listener to a fresh pool or engine: "
        + _yes(f["import"]["listeners"]),
        "  bare import called os.register_at_fork: "
        + _yes(f["import"]["register_at_fork_by_package"]),
        "  FlaskDBFix(other app) added a listener to an engine it does not manage: "
        + _yes(f["other_app"]["listeners"]),
        "  FlaskDBFix(other app) called os.register_at_fork: "
        + ("yes" if f["other_app"]["register_at_fork_by_package"] else "no"),
        "  register(engine) added listeners to that engine (the check can see one): "
        + ("yes" if f["registered"]["listeners"] else "no"),
        f"  (run took {data['seconds']:.0f} s)",
    ]
    return "\n".join(lines)


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    """SIGTERM unwinds like Ctrl-C: the running child is killed, the temp directory removed."""
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=13, help="interleaved rounds (13)")
    parser.add_argument(
        "--calls", type=int, default=2000, help="connects per engine per round (2000)"
    )
    parser.add_argument("--import-repeats", type=int, default=7, help="-X importtime runs (7)")
    parser.add_argument("--json", type=Path, help="write the raw numbers here")
    parser.add_argument("--child", choices=("timing", "facts"), help=argparse.SUPPRESS)
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child == "timing":
        print(json.dumps(child_timing(args.variant, args.tmp, args.calls)))
        return
    if args.child == "facts":
        print(json.dumps(child_facts(args.tmp)))
        return
    if min(args.rounds, args.calls, args.import_repeats) < 1:
        parser.error("--rounds, --calls and --import-repeats must be at least 1")
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        data = run(args.rounds, args.calls, args.import_repeats)
    except (ChildFailed, subprocess.TimeoutExpired) as e:
        sys.exit(f"import_cost: a measuring interpreter failed: {e}")
    if args.json:
        args.json.write_text(json.dumps(data, indent=1) + "\n")
    print(format_report(data))


if __name__ == "__main__":
    main()
