"""tools/fuzz-records: the record-file fuzz command (its full run is by hand, a
few thousand cases in tools/test.sh); here: it passes on today's readers, it
fails loudly when a case breaks a rule, and its mutations are seeded."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import os
import random
import subprocess
import sys

from tests.paths import REPO as ROOT
TOOL = os.path.join(ROOT, "tools", "fuzz-records")


def run(*args):
    return subprocess.run([sys.executable, TOOL, "--quiet", *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)


def load_tool():
    loader = importlib.machinery.SourceFileLoader("fuzz_records", TOOL)
    spec = importlib.util.spec_from_loader("fuzz_records", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def test_a_few_hundred_cases_pass():
    r = run("--cases", "300", "--seed", "3", "--jobs", "2")
    lines = r.stdout.splitlines()
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert lines[-1].startswith("fuzz-records: PASS (300 cases, 0 failed, seed 3")
    assert "parse refused: RecordFormatError" in r.stdout and "served" in r.stdout
    assert "replay refused: RecordFormatError" in r.stdout
    assert "largest memory growth in one case:" in r.stdout and "most CPU in one case:" in r.stdout


def test_a_case_over_its_time_limit_fails_the_run():
    r = run("--cases", "4", "--case-timeout", "0.000001", "--wall-timeout", "0.000001")
    assert r.returncode == 1
    assert r.stdout.splitlines()[-1].startswith("fuzz-records: FAIL (4 cases, 4 failed")
    assert r.stdout.count("    hang: ") == 4


def test_mutations_are_seeded_and_varied():
    tool = load_tool()
    with open(os.path.join(ROOT, "records", "edu.vfiorec"), "rb") as f:
        edu = f.read()
    a = [tool.mutate(edu, random.Random(f"1:{i}"))[0] for i in range(50)]
    b = [tool.mutate(edu, random.Random(f"1:{i}"))[0] for i in range(50)]
    assert a == b
    assert len(set(a)) >= 45 and edu not in a


def test_bad_arguments_exit_2():
    r = run("--cases", "-1")
    assert r.returncode == 2 and "--cases >= 0" in r.stderr


def test_cassettes_are_fuzzed_and_replayed_in_both_modes():
    """The shipped cassettes are among the default inputs, every cassette record type has
    fields to aim at, and a mutated cassette is replayed (strict and per-register)."""
    from vfio.record import format as F
    tool = load_tool()
    assert {F.CASSETTE + 1 + i for i in range(F.MARKER - F.CASSETTE)} <= set(tool.FIELDS)
    cassettes = [os.path.join(ROOT, "records", n) for n in ("edu-session.vfiorec", "nvme-identify-session.vfiorec")]
    r = run("--cases", "200", "--seed", "7", *cassettes)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "cassette strict" in r.stdout and "cassette per-register" in r.stdout
    assert "call error CassetteMismatch" in r.stdout
