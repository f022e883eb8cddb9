"""Outcomes of another test suite's run, read from its JUnit XML file (the drop-in tests
compare a suite's outcomes with and without the package)."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path


def junit_outcomes(junit: Path) -> dict[str, str]:
    """``classname::name`` -> ``passed``, ``failed`` (a failure or an error) or ``skipped``."""
    outcomes = {}
    for case in ET.parse(junit).iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        outcome = "failed" if failed else "skipped" if skipped else "passed"
        outcomes[f"{case.get('classname')}::{case.get('name')}"] = outcome
    return outcomes
