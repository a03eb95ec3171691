"""The shipped cassettes (records/*-session.vfiorec, recorded in the guest against QEMU's
edu and nvme by tests/kernel/test_cassette_sessions.py): the same, unmodified example
scripts, given the cassette's path instead of a PCI address, run here with no VFIO and
print exactly what they printed in the guest (records/*-session.stdout)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import EXAMPLES, RECORDS, REPO

SESSIONS = [("edu_driver.py", "edu-session"), ("nvme_identify.py", "nvme-identify-session")]


def _run(script: str, arg: str):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p)}
    env.pop("VFIO_RECORD", None)
    return subprocess.run([sys.executable, os.path.join(EXAMPLES, script), arg], capture_output=True, text=True,
                          timeout=120, cwd=REPO, env=env)


@pytest.mark.parametrize("script,name", SESSIONS, ids=[n for _, n in SESSIONS])
def test_the_script_prints_what_it_printed_in_the_guest(script, name):
    with open(os.path.join(RECORDS, f"{name}.stdout")) as f:
        guest = f.read()
    p = _run(script, os.path.join(RECORDS, f"{name}.vfiorec"))
    assert p.returncode == 0, p.stderr
    assert p.stdout == guest and p.stderr == ""


def test_the_nvme_identity_comes_from_replayed_dma():
    with open(os.path.join(RECORDS, "nvme-identify-session.stdout")) as f:
        out = f.read()
    from vfio.record import format as F
    rec = F.load(os.path.join(RECORDS, "nvme-identify-session.vfiorec"))
    dma = b"".join(bytes(r.data) for r in rec.records if type(r) is F.DmaWrite)
    serial = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("serial: "))
    model = next(line.split(": ", 1)[1] for line in out.splitlines() if line.startswith("model: "))
    assert serial.encode() in dma and model.encode() in dma
    # and nowhere else in the file: not in the layout, not in an access
    rest = F.write(F.DeviceRecord([r for r in rec.records if type(r) is not F.DmaWrite], version_minor=1))
    assert serial.encode() not in rest and model.encode() not in rest


def test_a_cassette_that_does_not_exist_is_an_address_error():
    p = _run("edu_driver.py", os.path.join(RECORDS, "no-such-session.vfiorec"))
    assert p.returncode == 1 and "Traceback" not in p.stderr and p.stderr.startswith("edu_driver: ")


def test_the_opener_takes_a_cassette_where_an_address_goes():
    import vfio
    from vfio.device import Interface
    from vfio.record.format import RecordFormatError
    with vfio.open_pci_device(os.path.join(RECORDS, "edu-session.vfiorec")) as dev:
        assert dev.interface is Interface.REPLAY and dev.dma is dev.backend.dma
        assert dev.config.read(0, 256)[:4] == bytes.fromhex("3412e811")    # the session's first access
    with pytest.raises(RecordFormatError, match="not a cassette"):
        vfio.open_pci_device(os.path.join(RECORDS, "edu.vfiorec"))
