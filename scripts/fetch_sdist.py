"""Download the locked sdist of one package into a folder, checked against uv.lock's hash.

    python scripts/fetch_sdist.py NAME DEST

The version is the one installed in this interpreter, so the file matches what runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import re
import sys
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def locked_sdist(name: str, version: str) -> tuple[str, str]:
    # A regex, not tomllib: this also runs on Python 3.10.
    block = re.search(
        rf'\[\[package\]\]\nname = "{re.escape(name)}"\nversion = "{re.escape(version)}"\n'
        r'(?:(?!\[\[package\]\]).*\n)*?sdist = \{ url = "([^"]+)", hash = "sha256:([0-9a-f]+)"',
        (ROOT / "uv.lock").read_text(),
    )
    if block:
        return block.group(1), block.group(2)
    raise SystemExit(f"fetch_sdist: {name} {version} is not in uv.lock")


def main() -> None:
    name, dest = sys.argv[1], Path(sys.argv[2])
    version = importlib.metadata.version(name)
    url, digest = locked_sdist(name, version)
    target = dest / url.rsplit("/", 1)[1]
    if target.exists() and hashlib.sha256(target.read_bytes()).hexdigest() == digest:
        return
    print(f"setup: downloading the {name} {version} sdist (its test suite)")
    with urllib.request.urlopen(url, timeout=120) as response:
        data = response.read()
    if hashlib.sha256(data).hexdigest() != digest:
        raise SystemExit(f"fetch_sdist: {url} does not match the sha256 in uv.lock")
    dest.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


if __name__ == "__main__":
    main()
