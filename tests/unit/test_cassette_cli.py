"""vfio-record: running an unmodified program with recording on, printing a cassette's trace,
and ending as a command-line tool should (messages, exit status, no traceback)."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.paths import RECORDS, REPO
from vfio.record import format as F

RECORD = "import sys; from vfio.record.cli import record_main; sys.exit(record_main())"
# a program that opens "its device" the way vfio.open_pci_device does when recording is asked for
PROGRAM = ("from vfio.model import open_model_device; from vfio.models.edu import EduModel; "
           "from vfio.record.cassette import record_if_requested; "
           "dev = record_if_requested(open_model_device(EduModel())); "
           "print(hex(dev.region(0).read32(0))); dev.close()")


def _run(*args, env=None):
    e = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    e.pop("VFIO_RECORD", None)
    return subprocess.run([sys.executable, "-c", RECORD, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env={**e, **(env or {})})


def test_a_program_is_recorded_through_the_environment(tmp_path):
    out = tmp_path / "prog.vfiorec"
    p = _run("-o", str(out), "--", sys.executable, "-c", PROGRAM)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "0x10000ed\n" and p.stderr.startswith(f"vfio-record: {out}: ")
    rec = F.load(out)
    assert rec.cassette.text.startswith("-c")
    assert [e for r in rec.records if type(r) is F.Accesses for e in r.entries][-1] == F.Access(0, 4, 0, 0, 0x010000ED)


def test_a_program_that_opens_no_device_writes_nothing(tmp_path):
    out = tmp_path / "none.vfiorec"
    p = _run("-o", str(out), "--", sys.executable, "-c", "print('hi')")
    assert p.returncode == 1 and not out.exists()
    assert "no cassette written" in p.stderr and "Traceback" not in p.stderr


def test_the_program_status_is_kept(tmp_path):
    p = _run("-o", str(tmp_path / "x.vfiorec"), "--", sys.executable, "-c", "import sys; sys.exit(3)")
    assert p.returncode == 3 and "exited with status 3" in p.stderr
    p = _run("-o", str(tmp_path / "x.vfiorec"), "--", "no-such-program-here")
    assert p.returncode == 127 and "no-such-program-here" in p.stderr and "Traceback" not in p.stderr


def test_bad_arguments_exit_2(tmp_path):
    for args in ([], ["-o", str(tmp_path / "x")], ["--", "true"], ["-o", "/no/such/dir/x.vfiorec", "--", "true"],
                 ["--trace", "x", "-o", "y"]):
        p = _run(*args)
        assert p.returncode == 2 and "usage:" in p.stderr and "Traceback" not in p.stderr, args


def test_trace_prints_one_access_or_event_per_line():
    p = _run("--trace", os.path.join(RECORDS, "edu-session.vfiorec"))
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("# cassette: edu_driver.py ")
    assert any(l.split()[1:] == ["write32", "BAR0+0x4", "(LIVENESS)", "=", "0x12345678"] for l in lines)
    assert any("read32 BAR0+0x4 (LIVENESS) = 0xedcba987" in l for l in lines)
    assert sum("-- interrupt index 1 vector 0" in l for l in lines) == 2
    assert any("-- device wrote 1024 bytes at IOVA 0x301000" in l for l in lines)
    rec = F.load(os.path.join(RECORDS, "edu-session.vfiorec"))
    n = sum(len(r.entries) for r in rec.records if type(r) is F.Accesses) + \
        sum(1 for r in rec.records if type(r) is F.AccessData)
    assert sum(1 for l in lines if not l.lstrip().startswith(("--", "#"))) == n


def test_trace_of_a_file_without_a_session_is_refused():
    p = _run("--trace", os.path.join(RECORDS, "edu.vfiorec"))
    assert p.returncode == 1 and "not a cassette" in p.stderr and p.stdout == ""
    p = _run("--trace", "/nonexistent/x.vfiorec")
    assert p.returncode == 1 and "No such file" in p.stderr


def test_trace_into_a_closed_pipe_ends_quietly():
    cassette = os.path.join(RECORDS, "nvme-identify-session.vfiorec")
    p = subprocess.run(f"{sys.executable} -c '{RECORD}' --trace {cassette} | head -1", shell=True, capture_output=True, text=True, timeout=60, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": REPO})
    assert p.stdout.startswith("# cassette:") and "Traceback" not in p.stderr


def test_a_program_that_never_closes_its_device_still_leaves_its_cassette(tmp_path):
    out = tmp_path / "crash.vfiorec"
    crash = PROGRAM.replace("dev.close()", "raise SystemExit(4)")
    p = _run("-o", str(out), "--", sys.executable, "-c", crash)
    assert p.returncode == 4
    rec = F.load(out)
    assert [e for r in rec.records if type(r) is F.Accesses for e in r.entries] == [F.Access(0, 4, 0, 0, 0x010000ED)]
