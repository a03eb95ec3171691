#!/usr/bin/env python3
"""Count passed/failed/skipped tests in pytest junit XML files.

Shared by tools/run-kernel-tests (per-leg and matrix totals) and tools/test.sh
(the final ``total:`` line), so both count the same way: errors count as
failures, and ``passed = tests - failures - errors - skipped``.

    tools/junit_summary.py [--label NAME] [--extra-failed N] FILE...
prints ``NAME: N passed, N failed[, N skipped]``; a missing or unparsable file
is an error (exit 1), never a silent zero.
"""

from __future__ import annotations

import argparse
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass


@dataclass
class Counts:
    passed: int = 0
    failed: int = 0
    skipped: int = 0

    def __add__(self, other: "Counts") -> "Counts":
        return Counts(self.passed + other.passed, self.failed + other.failed,
                      self.skipped + other.skipped)

    def line(self, label: str) -> str:
        s = f"{label}: {self.passed} passed, {self.failed} failed"
        return s + (f", {self.skipped} skipped" if self.skipped else "")


def count_junit(path: str) -> Counts:
    """Counts of one pytest junit file; raises ValueError naming the file if it is not one."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError) as e:
        raise ValueError(f"{path}: not a readable junit XML file ({e})") from e
    suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
    if not suites:
        raise ValueError(f"{path}: no <testsuite> element")
    total = Counts()
    for s in suites:
        try:
            tests, fails, errors, skips = (int(s.get(k, "0")) for k in ("tests", "failures", "errors", "skipped"))
        except ValueError as e:
            raise ValueError(f"{path}: bad count attribute in <testsuite> ({e})") from e
        total += Counts(tests - fails - errors - skips, fails + errors, skips)
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--label", default="total")
    ap.add_argument("--extra-failed", type=int, default=0,
                    help="failures with no junit file to show for (e.g. a guest that crashed)")
    ap.add_argument("files", nargs="*")
    args = ap.parse_args(argv)
    total = Counts(failed=args.extra_failed)
    try:
        for f in args.files:
            total += count_junit(f)
    except ValueError as e:
        print(f"junit_summary: {e}", file=sys.stderr)
        return 1
    print(total.line(args.label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
