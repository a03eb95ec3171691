"""tools/run-kernel-tests boots a leg once more when its guest died before the
command started (a boot flake under TCG), and never when it died running the tests.

A stand-in tools/vfio-harness (a script in a scratch tools directory) answers as
the real one does: the no-exit-status line, with or without "before the command
started", exit 125; or a junit file and the closing summary line, exit 0.
"""

from __future__ import annotations

import argparse
import os
import stat
import textwrap

import pytest

from tests.unit.test_tools_harness import _load_run_kernel_tests

FAKE = textwrap.dedent('''\
    #!/usr/bin/env python3
    import os, sys
    calls = os.path.join(os.environ["FAKE_DIR"], "calls")
    n = len(open(calls).read()) if os.path.exists(calls) else 0
    open(calls, "a").write("x")
    plan = os.environ["FAKE_PLAN"].split(",")[n]
    if plan == "boot-died":
        print("vfio-harness: guest produced no exit status (qemu exit 0; before the command started; "
              "leg stock, iommu intel)", file=sys.stderr)
        sys.exit(125)
    if plan == "died-running":
        print("vfio-harness: guest produced no exit status (qemu exit 0; leg stock, iommu intel)", file=sys.stderr)
        sys.exit(125)
    junit = next(a.split("=", 1)[1] for a in sys.argv if a.startswith("--junitxml="))
    with open(junit, "w") as f:
        f.write('<testsuites><testsuite name="k" errors="0" failures="0" skipped="0" tests="3"/></testsuites>')
    print("vfio-harness: leg=stock iommu=intel exit=0 wall=1.0s command_start=2.00s", file=sys.stderr)
''')


@pytest.fixture
def rkt(tmp_path, monkeypatch):
    mod = _load_run_kernel_tests()
    tools = tmp_path / "tools"
    tools.mkdir()
    fake = tools / "vfio-harness"
    fake.write_text(FAKE)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setattr(mod, "TOOLS", str(tools))
    monkeypatch.setenv("FAKE_DIR", str(tmp_path))
    return mod


def _run(rkt, tmp_path, monkeypatch, plan: str):
    monkeypatch.setenv("FAKE_PLAN", plan)
    args = argparse.Namespace(junit_dir=str(tmp_path / "junit"), timeout=60, verbose=False, pytest_args=[],
                              fail_on_empty=False)
    leg = {x.name: x for x in rkt.LEGS}["stock"]
    res = rkt.run_leg(leg, args)
    calls = open(os.path.join(tmp_path, "calls")).read()
    return res, len(calls)


def test_a_guest_that_died_booting_is_booted_once_more(rkt, tmp_path, monkeypatch):
    res, boots = _run(rkt, tmp_path, monkeypatch, "boot-died,ok")
    assert boots == 2 and res.ok and (res.counts.passed, res.counts.failed) == (3, 0)
    assert "booted twice" in res.note


def test_only_once_more(rkt, tmp_path, monkeypatch):
    res, boots = _run(rkt, tmp_path, monkeypatch, "boot-died,boot-died,ok")
    assert boots == 2 and not res.ok and res.counts.failed == 1


def test_a_guest_that_died_running_the_tests_is_a_failure_not_retried(rkt, tmp_path, monkeypatch):
    res, boots = _run(rkt, tmp_path, monkeypatch, "died-running,ok")
    assert boots == 1 and not res.ok and res.counts.failed == 1
