"""Check what the release files contain: the wheel only the package (with py.typed), the
sdist the tests and all they run (benchmarks, docs, scripts).

    python scripts/check_dist.py WHEEL SDIST
"""

from __future__ import annotations

import sys
import tarfile
import zipfile


def main(wheel: str, sdist: str) -> int:
    problems = []
    names = zipfile.ZipFile(wheel).namelist()
    if "flask_uwsgi_dbfix/py.typed" not in names:
        problems.append("wheel: no flask_uwsgi_dbfix/py.typed")
    for top in ("tests/", "harness/", "example_app/", "benchmarks/", "docs/"):
        if any(n.startswith(top) for n in names):
            problems.append(f"wheel: contains {top}")
    if not any(n.endswith(".dist-info/licenses/LICENSE") for n in names):
        problems.append("wheel: no LICENSE in .dist-info/licenses/")
    with tarfile.open(sdist) as archive:
        members = {m.name.split("/", 1)[1] for m in archive.getmembers() if "/" in m.name}
    needed_in_sdist = (
        "tests/conftest.py", "tests/apps/bug_app.py", "harness/postgres.py", "LICENSE",
        "PYPI.md", "benchmarks/__main__.py", "benchmarks/results/benchmarks.json",
        "docs/conf.py", "docs/index.md", ".readthedocs.yaml",
    )  # fmt: skip
    for needed in needed_in_sdist:
        if needed not in members:
            problems.append(f"sdist: no {needed}")
    for problem in problems:
        print(f"check_dist: {problem}", file=sys.stderr)
    if not problems:
        print(f"check_dist: {len(names)} files in the wheel, {len(members)} in the sdist: OK")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:3]))
