"""Summaries, the printed table and the PNG charts of a benchmark run.

``python -m benchmarks.report DIR`` renders ``DIR/benchmarks.txt`` and the charts again from
``DIR/benchmarks.json`` (after a change here, without running the benchmarks again).
"""

from __future__ import annotations

import json
import statistics
import sys
import textwrap
from pathlib import Path
from typing import Any

from benchmarks.servers import RunResult

METRICS = {
    "pss_mib": "PSS MiB",
    "worker_private_mib": "worker private MiB",
    "ready_s": "ready s",
    "ready_cpu_s": "start CPU s",
    "rps": "req/s",
    "cpu_ms_per_req": "CPU ms/req",
    "conns_startup": "conns@start",
    "conns_loaded": "conns@load",
}
# (what is measured, numerator mode, denominator mode, metric, target, "<=" or ">=", judged
# only at); shown as "what: numerator label / denominator label", the labels of the table.
TARGETS: list[tuple[str, str, str, str, float | None, str, int | None]] = [
    ("memory", "fix", "bare", "pss_mib", 1.02, "<=", None),
    ("time to ready", "fix", "bare", "ready_s", 1.05, "<=", None),
    ("throughput", "fix", "bare", "rps", 0.98, ">=", None),
    # The same two costs in CPU time, which other jobs on the machine disturb far less.
    ("start-up CPU", "fix", "bare", "ready_cpu_s", 1.05, "<=", None),
    ("CPU per request", "fix", "bare", "cpu_ms_per_req", 1 / 0.98, "<=", None),
    ("memory", "fix", "lazy", "pss_mib", 0.30, "<=", 8),
    # The control: the same app (no DB work at import), fix on vs off.
    ("memory", "fix_clean", "bare", "pss_mib", 1.02, "<=", None),
    ("worker private memory at start", "fix_clean", "bare", "worker_private_mib", None, "", None),
    ("time to ready", "fix_clean", "bare", "ready_s", 1.05, "<=", None),
    ("start-up CPU", "fix_clean", "bare", "ready_cpu_s", 1.05, "<=", None),
    ("throughput", "fix_clean", "bare", "rps", 0.98, ">=", None),
    ("CPU per request", "fix_clean", "bare", "cpu_ms_per_req", 1 / 0.98, "<=", None),
]
# With --app: the user's app preforked against lazy-apps, no targets.
USER_RATIOS: list[tuple[str, str, str, str, float | None, str, int | None]] = [
    ("memory", "prefork", "lazy", "pss_mib", None, "", None),
    ("time to ready", "prefork", "lazy", "ready_s", None, "", None),
    ("throughput", "prefork", "lazy", "rps", None, "", None),
]

WIDTH = 100
"""Columns of the printed report: it is read in terminals and quoted in docs."""
MIN_REPEATS_JUDGED = 3
"""Fewer repeats than this (``--quick`` has one) are not judged against the targets: one
run on a shared machine says nothing about a 2 % target."""


def judged(data: dict[str, Any]) -> bool:
    return not data["quick"] and data["repeats"] >= MIN_REPEATS_JUDGED


def not_judged_note(data: dict[str, Any]) -> str:
    n = data["repeats"]
    return f"not judged: {n} repeat{'s' if n != 1 else ''}; use the full run"


GUARD_LABELS = {
    "recipe": "SQLAlchemy recipe",
    "ours": "ours",
    "ours_held": "ours, pool connected before the guard",
    "ours_getpid": "ours, without the fork-wiped page",
}


def progress_line(n: int, total: int, r: RunResult, label: str) -> str:
    """Two lines per run, named by the mode's label as in the table."""

    def f(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    return (
        f"[{n}/{total}] {label}, {r.workers} workers, repeat {r.repeat + 1}\n"
        f"    ready {f(r.ready_s, '.2f')} s (CPU {f(r.ready_cpu_s, '.2f')} s)"
        f"  PSS {f(r.pss_mib, '.0f')} MiB  {f(r.rps, '.0f')} req/s"
        f" ({f(r.cpu_ms_per_req, '.1f')} CPU ms/req)  failed {r.failed}"
        f"  conns {r.conns_startup}/{r.conns_loaded}" + (f"  ERROR {r.error}" if r.error else "")
    )


def spread(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def summarize(data: dict[str, Any]) -> dict[str, Any]:
    runs = data["runs"]
    per_mode: dict[str, dict[str, dict[str, Any]]] = {}
    for mode in data["modes"]:
        for w in data["workers"]:
            mine = [r for r in runs if r["mode"] == mode and r["workers"] == w]
            if not mine:
                continue
            entry: dict[str, Any] = {
                m: spread([r[m] for r in mine if r[m] is not None]) for m in METRICS
            }
            entry["failed"] = sum(r["failed"] for r in mine)
            entry["down"] = sum(bool(r["error"]) or r["ready_s"] is None for r in mine)
            entry["runs"] = len(mine)
            per_mode.setdefault(mode, {})[str(w)] = entry
    ratios: dict[str, dict[str, Any]] = {}
    judge = judged(data)
    labels = {mode: info["label"] for mode, info in data["modes"].items()}
    for what, num, den, metric, target, op, only in (
        TARGETS if "bare" in data["modes"] else USER_RATIOS
    ):
        name = f"{what}: {labels.get(num, num)} / {labels.get(den, den)}"
        by_workers: dict[str, Any] = {}
        for w in data["workers"]:
            values = []
            for rep in range(data["repeats"]):
                a = _value(runs, num, w, rep, metric)
                b = _value(runs, den, w, rep, metric)
                if a is not None and b:
                    values.append(a / b)
            s = spread(values)
            if s is not None:
                ok = None
                if judge and target is not None and only in (None, w):  # where it is set
                    ok = s["median"] <= target if op == "<=" else s["median"] >= target
                by_workers[str(w)] = s | {"met": ok}
        where = "" if only is None else f" at {only} workers"
        goal = "none" if target is None else f"{op} {target:.3g}{where}"
        ratios[name] = {"target": goal, "by_workers": by_workers}
    guard = data["pid_guard"]["ns_per_connect"]
    target_ns = data["pid_guard"]["target_ns"]
    for name, label in GUARD_LABELS.items():
        if name == "recipe" or name not in guard:
            continue
        ratios[f"pid guard ns ({label})"] = {
            "target": f"<= {target_ns}",
            "overhead": guard[name]["overhead"],
            "met": guard[name]["overhead"]["median"] <= target_ns if judge else None,
        }
        best = guard[name].get("overhead_at_best_speed")
        if best is not None:
            ratios[f"pid guard ns ({label}), at the machine's best speed"] = {
                "target": f"<= {target_ns}",
                "overhead": best,
                "met": best["median"] <= target_ns if judge else None,
            }
    return {"per_mode": per_mode, "ratios": ratios}


def _value(runs: list[dict[str, Any]], mode: str, w: int, rep: int, metric: str) -> float | None:
    for r in runs:
        if r["mode"] == mode and r["workers"] == w and r["repeat"] == rep:
            v = r[metric]
            return None if v is None else float(v)
    return None


def _fmt(s: dict[str, float] | None, spec: str) -> str:
    if s is None:
        return "-"
    if s["min"] == s["max"]:
        return format(s["median"], spec)
    return f"{s['median']:{spec}} [{s['min']:{spec}}-{s['max']:{spec}}]"


def table(data: dict[str, Any]) -> str:
    meta = data["meta"]
    m, v = meta["machine"], meta["versions"]
    b = data.get("app_build") or {}
    lines = [
        f"flask-uwsgi-dbfix benchmarks, {meta['date']} ({'quick' if data['quick'] else 'full'}"
        f" run, {data['repeats']} repeat(s), {meta['seconds']} s): {data['command']}",
        f"machine: {m['cores']} cores, {m['cpu']}, Linux {m['kernel']}; load average "
        f"{m['loadavg_at_start'][0]:.1f} at start, {m['loadavg_at_end'][0]:.1f} at end"
        " (shared machine: other jobs were running)",
        "versions: "
        + ", ".join(f"{k} {val}" for k, val in v.items() if k != "uwsgi")
        + f", uWSGI {v['uwsgi']}",
        f"app: {data['app']}"
        + (f" [{data['label']}]" if data.get("label") else "")
        + (f" in {data['app_dir']}" if data.get("app_dir") else "")
        + (
            f"; its import builds {b['rss_growth_mib']:.0f} MiB (RSS growth) in "
            f"{b['seconds']:.1f} s: {b['models']} models, {b['routes']} URL rules, "
            f"{b['catalogue_rows']} cached catalogue rows"
            + (f" (scaled x{b['scale']} for a quick run)" if b.get("scale", 1) != 1 else "")
            if b
            else ""
        ),
        f"load: GET {data['load']['path']}, {data['load']['warmup']} warm-up + "
        f"{data['load']['requests']} timed requests at concurrency "
        f"{data['load']['concurrency']}; values are median [min-max] over repeats",
        "",
    ]
    lines += _mode_tables(data)
    judge = judged(data)
    lines.append("ratios in the same run (per repeat; median [min-max]) against the targets:")
    if not judge:
        lines.append(f"  {not_judged_note(data)} (python -m benchmarks)")
    for name, r in data["summary"]["ratios"].items():
        if "by_workers" in r:
            parts = [
                f"{w}w {_fmt(s, '.3f')}{' MISSED' if s['met'] is False else ''}"
                for w, s in r["by_workers"].items()
            ]
            goal = "no target" if r["target"] == "none" else f"target {r['target']}"
            lines += _packed(f"  {name} ({goal}):", parts or ["-"])
        else:
            o = r["overhead"]
            extra = (
                [f"p10 {o['p10']:.0f} .. p90 {o['p90']:.0f}", f"min-min {o['min_minus_min']:.0f}"]
                if "p10" in o
                else []
            )
            parts = [
                f"{o['median']:.0f} ns" + (" MISSED" if r["met"] is False else ""),
                f"p25 {o['p25']:.0f} .. p75 {o['p75']:.0f}",
                *extra,
            ]
            lines += _packed(f"  {name} (target {r['target']}):", parts)
    lines.append("")
    from benchmarks.pid_guard import format_report

    lines.append(format_report(data["pid_guard"]))
    if "fix_parts" in data:
        from benchmarks import fix_parts

        lines.append(fix_parts.format_report(data["fix_parts"]))
    return "\n".join(_wrapped("\n".join(lines)))


# Four narrow tables rather than one 200 columns wide: (title, [(metric, column, format)]).
TABLES: list[tuple[str, list[tuple[str, str, str]]]] = [
    (
        "memory (lower is better)",
        [("pss_mib", "PSS MiB", ".0f"), ("worker_private_mib", "worker private MiB", ".2f")],
    ),
    (
        "start-up (lower is better)",
        [("ready_s", "ready s", ".2f"), ("ready_cpu_s", "start CPU s", ".2f")],
    ),
    (
        "load (req/s: higher is better; CPU: lower)",
        [("rps", "req/s", ".0f"), ("cpu_ms_per_req", "CPU ms/req", ".1f"), ("", "failed", "")],
    ),
    (
        "server connections",
        [("conns_startup", "at start", ".0f"), ("conns_loaded", "after load", ".0f")],
    ),
]


def _mode_tables(data: dict[str, Any]) -> list[str]:
    per_mode = data["summary"]["per_mode"]
    label_width = max(len(info["label"]) for info in data["modes"].values())
    lines: list[str] = []
    for title, columns in TABLES:
        rows: list[list[str]] = []
        for w in data["workers"]:
            for mode, info in data["modes"].items():
                e = per_mode.get(mode, {}).get(str(w))
                if not info["available"] or e is None:
                    continue
                cells = [str(w), info["label"]]
                for metric, _, spec in columns:
                    if metric:
                        cells.append(_fmt(e[metric], spec))
                    else:
                        down = f" ({e['down']} did not start)" if e.get("down") else ""
                        cells.append(str(e["failed"]) + down)
                rows.append(cells)
            rows.append([])
        head = ["workers", "mode", *(c for _, c, _ in columns)]
        widths = [7, label_width] + [
            max(len(head[i]), *(len(r[i]) for r in rows if r)) for i in range(2, len(head))
        ]
        lines.append(f"{title}:")
        lines.append("  ".join(c.ljust(wd) for c, wd in zip(head, widths, strict=True)).rstrip())
        for cells in rows:
            if not cells:  # between worker counts
                lines.append("")
                continue
            line = "  ".join(c.ljust(wd) for c, wd in zip(cells, widths, strict=True))
            lines.append(line.rstrip())
        for info in data["modes"].values():
            if not info["available"]:
                lines.append(f"{'':7s}  {info['label']}: {info['note']}")
    return lines


def _packed(head: str, parts: list[str], width: int = WIDTH) -> list[str]:
    """``head`` and ``parts`` joined by "; ", continued on lines indented under ``head``."""
    lines = [head]
    for part in parts:
        sep = " " if lines[-1] == head else "; "
        if len(lines[-1]) + len(sep) + len(part) + 1 > width:
            lines[-1] += ";" if lines[-1] != head else ""
            lines.append("      " + part)
        else:
            lines[-1] += sep + part
    return lines


def _wrapped(text: str, width: int = WIDTH) -> list[str]:
    """Every line within ``width``: a longer one (a sentence, a list) goes on indented."""
    out: list[str] = []
    for line in text.splitlines():
        if len(line) <= width:
            out.append(line)
            continue
        indent = " " * (len(line) - len(line.lstrip()))
        out += textwrap.wrap(
            line,
            width,
            subsequent_indent=indent + "    ",
            break_on_hyphens=False,
            break_long_words=False,
        )
    return out


# The per-metric charts: (file, metric, what is measured, unit, lower is better).
CHARTS: list[tuple[str, str, str, str, bool]] = [
    ("memory.png", "pss_mib", "Memory: PSS of master + workers after warm-up", "MiB", True),
    ("startup.png", "ready_s", "Start-up: time until every worker has answered", "s", True),
    (
        "startup_cpu.png",
        "ready_cpu_s",
        "Start-up CPU: CPU time used until every worker has answered",
        "CPU s",
        True,
    ),
    ("throughput.png", "rps", "Throughput: requests per second", "req/s", False),
]
# Small multiples, a few series each: (panel title, modes). A panel with fewer than two of
# its modes in the run (a --app run has only "prefork" and "lazy") is left out.
PANELS: list[tuple[str, list[str]]] = [
    ("the choice: no fix, the fix, lazy-apps", ["bare", "fix", "lazy"]),
    ("your app: preforked against lazy-apps", ["prefork", "lazy"]),
    ("the fix's own cost (control: no DB work at import)", ["bare", "fix", "fix_clean"]),
    ("the master's own connection (1 run each)", ["fix", "fix_keep", "fix_close"]),
]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
LINESTYLES: list[Any] = ["-", "--", "-.", ":", (0, (5, 1)), (0, (3, 1, 1, 1)), (0, (1, 1))]


def better(lower: bool) -> str:
    return "lower is better" if lower else "higher is better"


def _footnote(data: dict[str, Any]) -> str:
    kind = "quick" if data["quick"] else "full"
    return (
        f"{data['app']}, {kind} run of {data['meta']['date'][:10]}: median of "
        f"{data['repeats']} repeat(s), bars min-max; a mode measured once has no bars"
    )


def charts(data: dict[str, Any], out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = [
        _metric_chart(data, out / filename, metric, title, unit, lower, plt)
        for filename, metric, title, unit, lower in CHARTS
    ]
    made.append(_connections_chart(data, out, plt))
    made.append(_pid_guard_chart(data, out, plt))
    return made


def _metric_chart(
    data: dict[str, Any], path: Path, metric: str, title: str, unit: str, lower: bool, plt: Any
) -> Path:
    """One panel per comparison; each mode keeps its colour, marker and line style in every
    panel and chart, and series that coincide are nudged apart sideways so none hides."""
    per_mode = data["summary"]["per_mode"]
    order = list(data["modes"])
    panels = [(t, [m for m in modes if m in per_mode]) for t, modes in PANELS]
    panels = [(t, modes) for t, modes in panels if len(modes) >= 2]
    if not panels:  # modes no panel knows: all in one
        panels = [("", [m for m in order if m in per_mode])]
    fig, axes = plt.subplots(
        1, len(panels), figsize=(max(7.5, 4.6 * len(panels) + 0.6), 4.4), squeeze=False
    )
    for ax, (panel_title, modes) in zip(axes[0], panels, strict=True):
        for k, mode in enumerate(modes):
            nudge = 2 ** ((k - (len(modes) - 1) / 2) * 0.05)
            xs, ys, lo, hi = [], [], [], []
            for w in data["workers"]:
                s = (per_mode[mode].get(str(w)) or {}).get(metric)
                if s is None:
                    continue
                xs.append(w * nudge)
                ys.append(s["median"])
                lo.append(s["median"] - s["min"])
                hi.append(s["max"] - s["median"])
            if not xs:
                continue
            i = order.index(mode)
            ax.errorbar(
                xs,
                ys,
                yerr=[lo, hi],
                marker=MARKERS[i % len(MARKERS)],
                markersize=6,
                linestyle=LINESTYLES[i % len(LINESTYLES)],
                color=f"C{i}",
                capsize=3,
                label=data["modes"][mode]["label"],
            )
        ax.set_title(panel_title, fontsize=9)
        ax.set_xlabel("uWSGI workers")
        ax.set_xscale("log", base=2)
        ax.set_xticks(data["workers"], [str(w) for w in data["workers"]])
        ax.minorticks_off()
        ax.set_ylabel(f"{unit} ({better(lower)})")
        ax.set_ylim(bottom=0, top=ax.get_ylim()[1] * 1.25)  # room for the legend
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(f"{title} ({better(lower)})", fontsize=11)
    fig.text(0.01, 0.01, _footnote(data), fontsize=7, color="0.4")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _pid_guard_chart(data: dict[str, Any], out: Path, plt: Any) -> Path:
    guard = data["pid_guard"]["ns_per_connect"]
    target = data["pid_guard"]["target_ns"]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    names = [n for n in GUARD_LABELS if n in guard]
    med = [guard[n]["overhead"]["median"] for n in names]
    err = [
        [med[i] - guard[n]["overhead"]["p25"] for i, n in enumerate(names)],
        [guard[n]["overhead"]["p75"] - med[i] for i, n in enumerate(names)],
    ]
    colors = ["C0" if m <= target else "C1" for m in med]
    ax.barh([GUARD_LABELS[n] for n in names], med, xerr=err, capsize=3, color=colors)
    ax.axvline(target, color="red", linestyle="--", label=f"target: at most {target} ns")
    ax.set_xlabel("extra ns per engine.connect() + close() (median, bars p25-p75)")
    ax.set_title("Pid guard: time added to each connection checkout (lower is better)", fontsize=10)
    ax.legend(fontsize=8, loc="upper right")
    fig.text(
        0.01,
        0.01,
        f"SQLite, {data['pid_guard']['rounds']} interleaved rounds; blue: within the target,"
        " orange: over it",
        fontsize=7,
        color="0.4",
    )
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    path = out / "pid_guard.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def _connections_chart(data: dict[str, Any], out: Path, plt: Any) -> Path:
    """Grouped bars: server connections after startup per mode, at each worker count."""
    per_mode = data["summary"]["per_mode"]
    modes = [m for m in data["modes"] if m in per_mode]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        xs, ys = [], []
        for j, w in enumerate(data["workers"]):
            s = (per_mode[mode].get(str(w)) or {}).get("conns_startup")
            if s is not None:
                xs.append(j + (i - (len(modes) - 1) / 2) * width)
                ys.append(s["median"])
        bars = ax.bar(xs, ys, width, label=data["modes"][mode]["label"], color=f"C{i}")
        ax.bar_label(bars, fmt="%.0f", fontsize=7)
    for info in data["modes"].values():
        if not info["available"]:
            ax.plot([], [], " ", label=f"{info['label']}: {info['note']}")
    ax.set_xticks(range(len(data["workers"])), [str(w) for w in data["workers"]])
    ax.set_xlabel("uWSGI workers")
    ax.set_ylabel("connections in pg_stat_activity (lower is better)")
    ax.set_title(
        "Server connections once every worker has answered, before any query request"
        " (lower is better)",
        fontsize=9,
    )
    fig.text(0.01, 0.01, _footnote(data), fontsize=7, color="0.4")
    ax.set_ylim(0, max([1, *data["workers"]]) * 1.5)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    path = out / "connections.png"
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def rerender(out: Path) -> list[Path]:
    """Summary, table and charts again from ``out/benchmarks.json``; its data is kept."""
    path = out / "benchmarks.json"
    data = json.loads(path.read_text())
    data["summary"] = summarize(data)
    path.write_text(json.dumps(data, indent=1, default=str) + "\n")
    (out / "benchmarks.txt").write_text(table(data) + "\n")
    return [path, out / "benchmarks.txt", *charts(data, out)]


if __name__ == "__main__":
    if len(sys.argv) != 2 or not (Path(sys.argv[1]) / "benchmarks.json").is_file():
        print(
            "usage: python -m benchmarks.report DIR (a directory with a benchmarks.json)",
            file=sys.stderr,
        )
        sys.exit(2)
    print("wrote " + ", ".join(map(str, rerender(Path(sys.argv[1])))))
