"""The version matrix's bookkeeping (see noxfile.py).

    python scripts/matrix_report.py versions OUT.json
        record the versions this interpreter runs with (called inside each leg)
    python scripts/matrix_report.py table [--check-readme README.md | --write-readme README.md]
        print one table of every leg in .matrix/ and the locked suite's slowest tests;
        check (or rewrite) README.md's "Supported versions" table, which lists what the
        pinned legs really ran

Exit status of ``table``: 0, or 1 when a leg failed, ran no test, or README.md is stale.
"""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MATRIX_DIR = ROOT / ".matrix"
PACKAGES = ["Flask", "Flask-SQLAlchemy", "SQLAlchemy", "psycopg2-binary", "psycopg", "pyuwsgi"]
BEGIN, END = "<!-- versions-table -->", "<!-- /versions-table -->"
UNPINNED_LEGS = {"newest"}  # its versions change with every release: not in README's table


def record_versions(out: Path) -> None:
    found = {"Python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "-"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(found, indent=2) + "\n")


def _counts(junit: Path) -> dict[str, int]:
    counts = {"passed": 0, "failed": 0, "skipped": 0}
    for case in ET.parse(junit).iter("testcase"):
        if case.find("failure") is not None or case.find("error") is not None:
            counts["failed"] += 1
        elif case.find("skipped") is not None:
            counts["skipped"] += 1
        else:
            counts["passed"] += 1
    return counts


def legs() -> list[dict[str, object]]:
    rows = []
    for versions_file in sorted(MATRIX_DIR.glob("*.versions.json")):
        leg = versions_file.name.removesuffix(".versions.json")
        junit = MATRIX_DIR / f"{leg}.xml"
        counts = _counts(junit) if junit.exists() else {"passed": 0, "failed": 0, "skipped": 0}
        ok = junit.exists() and counts["failed"] == 0 and counts["passed"] > 0
        rows.append({"leg": leg, **json.loads(versions_file.read_text()), **counts, "ok": ok})
    return rows


def print_table(rows: list[dict[str, object]]) -> None:
    columns = ["leg", "Python", *PACKAGES, "passed", "failed", "skipped"]
    short = {"Flask-SQLAlchemy": "FSA", "psycopg2-binary": "psycopg2", "pyuwsgi": "uWSGI"}
    header = [short.get(c, c) for c in columns] + ["result"]
    body = [[str(r[c]) for c in columns] + ["ok" if r["ok"] else "FAILED"] for r in rows]
    widths = [max(len(x) for x in col) for col in zip(header, *body, strict=True)]
    for line in [header, ["-" * w for w in widths], *body]:
        print("  ".join(x.ljust(w) for x, w in zip(line, widths, strict=True)).rstrip())


def print_slowest(junit: Path, count: int = 12) -> None:
    """The slowest tests of one leg, with the total: where CI's time went (on a loaded
    machine too), shown in the last lines CI prints."""
    cases = [
        (float(c.get("time", 0)), f"{c.get('classname', '')}::{c.get('name', '')}")
        for c in ET.parse(junit).iter("testcase")
    ]
    total = sum(t for t, _ in cases)
    print(f"\nslowest tests of {junit.stem} ({len(cases)} tests, {total:.0f} s in tests):")
    for seconds, name in sorted(cases, reverse=True)[:count]:
        print(f"  {seconds:7.1f} s  {name}")


def readme_table(rows: list[dict[str, object]]) -> str:
    """Per dependency, the versions the pinned legs ran, each proven by a green leg."""
    pinned = [r for r in rows if r["leg"] not in UNPINNED_LEGS and r["ok"]]
    lines = [BEGIN, "| | versions tested by CI (every leg green) |", "|---|---|"]
    for name in ["Python", *PACKAGES]:
        seen = sorted({str(r[name]) for r in pinned} - {"-"}, key=_version_key)
        lines.append(f"| {name} | {', '.join(seen)} |")
    lines.append(
        "| newest releases | the `newest` leg installs every dependency without the lock |"
    )
    lines.append(END)
    return "\n".join(lines)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.replace("-", ".").split("."))


def main(argv: list[str]) -> int:
    if argv[:1] == ["versions"] and len(argv) == 2:
        record_versions(Path(argv[1]))
        return 0
    if argv[:1] != ["table"]:
        print(__doc__, file=sys.stderr)
        return 2
    rows = legs()
    if not rows:
        print("matrix: no leg ran (.matrix/ is empty)", file=sys.stderr)
        return 1
    print_table(rows)
    locked = MATRIX_DIR / "locked.xml"
    if locked.exists():
        print_slowest(locked)
    status = 0 if all(r["ok"] for r in rows) else 1
    sessions = MATRIX_DIR / "sessions.tsv"
    if sessions.exists():
        print("\nnox sessions (exit status, seconds):")
        for line in sessions.read_text().splitlines():
            name, code, seconds = line.split("\t")
            result = "ok" if code == "0" else f"FAILED (exit {code})"
            print(f"  {name:<28} {result:<16} {seconds} s")
            status |= code != "0"
    if len(argv) == 3 and argv[1] in ("--check-readme", "--write-readme"):
        readme = Path(argv[2])
        text = readme.read_text()
        start, end = text.find(BEGIN), text.find(END)
        if start < 0 or end < 0:
            print(f"matrix: {readme} has no {BEGIN} ... {END} block", file=sys.stderr)
            return 1
        current = text[start : end + len(END)]
        wanted = readme_table(rows)
        if argv[1] == "--write-readme":
            readme.write_text(text.replace(current, wanted))
        elif current != wanted:
            print(
                f"matrix: {readme}'s versions table differs from what CI ran; update it with\n"
                f"  python scripts/matrix_report.py table --write-readme {readme}\n"
                f"wanted:\n{wanted}",
                file=sys.stderr,
            )
            status = 1
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
