"""Cassettes against the real devices: the example drivers recorded in the guest, replayed.

Each test runs an unmodified example under ``vfio-record`` against the device
bound to vfio-pci, then runs the same script with the cassette's path instead
of the PCI address (replay: no VFIO involved) and requires the same output.
With ``VFIO_CASSETTE_UPDATE=1`` (``tools/vfio-harness --env
VFIO_CASSETTE_UPDATE=1 --devices edu,nvme --bind edu,nvme -- python3 -m pytest
-p no:benchmark tests/kernel/test_cassette_sessions.py``) the cassettes and the
output shipped under ``records/`` are replaced by the new recording:
tests/unit/test_cassette_shipped.py replays those on the host.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from tests.paths import EXAMPLES, REPO
from vfio.record import format as F

pytestmark = [pytest.mark.kernel, pytest.mark.whole_session]

RECORD = "import sys; from vfio.record.cli import record_main; sys.exit(record_main())"
UPDATE = os.environ.get("VFIO_CASSETTE_UPDATE") == "1"


def _run(args, env=None):
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=REPO,
                          env={**os.environ, "PYTHONPATH": path, **(env or {})})


def _record_and_replay(tmp_path, script: str, bdf: str, name: str) -> str:
    cassette = str(tmp_path / f"{name}.vfiorec")
    rec = _run([sys.executable, "-c", RECORD, "-o", cassette, "--", sys.executable, script, bdf])
    assert rec.returncode == 0, rec.stdout + rec.stderr
    assert os.path.getsize(cassette) > 0 and "vfio-record: " in rec.stderr
    played = _run([sys.executable, script, cassette], env={"VFIO_RECORD": ""})
    assert played.returncode == 0, played.stdout + played.stderr
    assert played.stdout == rec.stdout
    if UPDATE:
        shutil.copyfile(cassette, os.path.join(REPO, "records", f"{name}.vfiorec"))
        with open(os.path.join(REPO, "records", f"{name}.stdout"), "w") as f:
            f.write(rec.stdout)
    return cassette


def test_edu_driver_recorded_and_replayed(edu_bdf, tmp_path):
    cassette = _record_and_replay(tmp_path, os.path.join(EXAMPLES, "edu_driver.py"), edu_bdf, "edu-session")
    rec = F.load(cassette)
    kinds = {type(r) for r in rec.records}
    # the session's interrupts (factorial, DMA completion) and the device's DMA into memory
    assert {F.Cassette, F.Accesses, F.IrqSet, F.IrqEvent, F.DmaMap, F.DmaWrite, F.DmaUnmap} <= kinds
    assert sum(1 for r in rec.records if type(r) is F.IrqEvent) == 2
    assert rec.pci_info.bdf == edu_bdf


def test_nvme_identify_recorded_and_replayed(nvme_bdf, nvme_serial, tmp_path):
    cassette = _record_and_replay(tmp_path, os.path.join(EXAMPLES, "nvme_identify.py"), nvme_bdf,
                                  "nvme-identify-session")
    rec = F.load(cassette)
    # the serial number reached memory as the controller's DMA, and replay hands it back
    dma = b"".join(bytes(r.data) for r in rec.records if type(r) is F.DmaWrite)
    assert nvme_serial.encode() in dma
    assert any(type(r) is F.IrqEvent and r.index == 2 for r in rec.records)     # MSI-X


def test_the_cassette_fixture_records_when_asked_and_replays_otherwise(edu_bdf, tmp_path):
    """vfio_cassette VCR-style: --vfio-record-mode once records the real edu, a plain run replays it."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_edu.py").write_text(f'''
def test_liveness(vfio_cassette):
    dev = vfio_cassette("edu-liveness.vfiorec", bdf={edu_bdf!r})
    bar = dev.region(0).map()
    bar.write32(0x04, 0x12345678)
    assert bar.read32(0x04) == 0xEDCBA987
    assert bar.read32(0x00) == 0x010000ED
''')
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:benchmark", str(suite)]
    path = os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)
    run = lambda *extra: subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300,  # noqa: E731
                                        cwd=suite, env={**os.environ, "PYTHONPATH": path})
    first = run("--vfio-record-mode", "once")
    assert first.returncode == 0, first.stdout[-3000:]
    rec = F.load(suite / "edu-liveness.vfiorec")
    assert [e for r in rec.records if type(r) is F.Accesses for e in r.entries] == [
        F.Access(1, 4, 0, 4, 0x12345678), F.Access(0, 4, 0, 4, 0xEDCBA987), F.Access(0, 4, 0, 0, 0x010000ED)]
    again = run()
    assert again.returncode == 0, again.stdout[-3000:]
