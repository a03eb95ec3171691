"""The shipped captures (records/*.vfiorec) replayed against the real kernel's answers.

``python3 -m tests.record_oracle`` (formerly ``vfio-capture --answers``) ran
:func:`tests.record_oracle.answers` on the live
device inside the vfio-harness guest at capture time (QEMU edu, nvme and
e1000e bound to vfio-pci, Linux 6.12) and stored the results in
``fixtures/records/<name>.answers.json``: GET_INFO / GET_REGION_INFO /
GET_IRQ_INFO at several argsz and past the last index, reads past region ends,
refused writes and SET_IRQS requests with their errnos, BAR sizing, mmaps.
Here the same function runs on the replayed file and must give the same JSON.
"""

from __future__ import annotations

import json
import os

import pytest

from vfio import uapi
from vfio.record import format as F
from tests.record_oracle import answers
from vfio.record.pytest_plugin import vfio_record, vfio_replay_device  # noqa: F401

from tests.paths import FIXTURES, RECORDS
NAMES = ("edu", "nvme", "e1000e")


def kernel_answers(name: str) -> dict:
    with open(os.path.join(FIXTURES, "records", f"{name}.answers.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", NAMES)
def test_replay_answers_like_the_kernel(name, vfio_replay_device):
    dev = vfio_replay_device(f"records/{name}.vfiorec")
    got = json.loads(json.dumps(answers(dev)))
    want = kernel_answers(name)
    for section in want:
        assert got[section] == want[section], section
    assert got == want


@pytest.mark.parametrize("name", NAMES)
def test_shipped_files_round_trip(name):
    with open(os.path.join(RECORDS, f"{name}.vfiorec"), "rb") as f:
        raw = f.read()
    rec = F.parse(raw)
    assert F.write(rec) == raw
    assert rec.device_info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_PCI
    assert rec.config_region.size in (256, 4096)
    assert "vfio-capture through VFIO" in rec.notes[0]


def test_edu_facts(vfio_replay_device, vfio_record):
    dev = vfio_replay_device("records/edu.vfiorec")
    assert dev.config.read16(0) == 0x1234 and dev.config.read16(2) == 0x11E8
    assert dev.region(0).size == 1 << 20 and dev.region(0).info.mmappable
    bar0 = dev.region(0).map()
    assert bar0.read32(0) == 0x010000ED                     # edu's id register, captured
    bar0.close()
    assert dev.config.read16(4) == 0x0103                   # vfio-pci leaves bus mastering off
    assert dev.irq_info(uapi.VFIO_PCI_INTX_IRQ_INDEX).flags == 0x7
    assert set(vfio_record("records/edu.vfiorec").interrupts) == {0, 1, 2, 4}   # ERR refused: conventional PCI


def test_nvme_facts(vfio_replay_device):
    dev = vfio_replay_device("records/nvme.vfiorec")
    assert dev.info.can_reset
    assert dev.region(0).info.msix_mappable
    assert dev.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count == 65
    vec = dev.enable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, count=2)
    assert dev.backend.fire(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1)
    assert (vec[0].read(), vec[1].read()) == (0, 1)


def test_e1000e_rom_and_io_bar(vfio_replay_device):
    dev = vfio_replay_device("records/e1000e.vfiorec")
    rom = dev.region(uapi.VFIO_PCI_ROM_REGION_INDEX)
    assert rom.read(0, 2) == b"\x55\xaa"                    # option ROM signature
    io = dev.region(2)
    assert io.size == 32 and not io.info.mmappable
