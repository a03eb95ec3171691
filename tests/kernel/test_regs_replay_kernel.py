"""Replay's config write policy against the real vfio-pci's (QEMU edu and nvme in the harness guest).

A fresh capture is replayed, and the same config writes go to the live device
through its VFIO config region and to the replay.  Only registers whose answer
the kernel's virtualisation decides are written (BARs and ROM sizing, Status,
interrupt line and pin, capability list pointers, MSI address/data, MSI-X,
PM's PME bits, PCI Express status and link control, extended headers); what
the device's own hardware would decide is not in a capture.  Every written
register must read back the same from both.  The live registers are put back
afterwards.
"""

from __future__ import annotations

import pytest

import vfio
from vfio.pci import regs as R
from vfio.pci.caps import MsiCap
from vfio.pci.config import ConfigSpace
from vfio.record import format as F
from vfio.record.capture import capture_device
from vfio.record.replay import open_replay

pytestmark = pytest.mark.kernel


@pytest.fixture(params=["edu", pytest.param("nvme", marks=pytest.mark.vfio_nvme)])
def live(request):
    bdf = request.getfixturevalue(f"{request.param}_bdf")
    with vfio.open_pci_device(bdf) as dev:
        yield request.param, dev


def kernel_decided_writes(cs: ConfigSpace) -> list[tuple[int, int, int]]:
    seq = [(R.BASE_ADDRESS_0 + 4 * i, 4, 0xFFFFFFFF) for i in range(R.STD_NUM_BARS)]
    seq += [(R.ROM_ADDRESS, 4, 0xFFFFFFFF), (R.STATUS, 2, 0xFFFF), (R.INTERRUPT_LINE, 1, 0x0B),
            (R.INTERRUPT_PIN, 1, 0), (R.CAPABILITY_LIST, 1, 0)]
    for c in cs.capabilities:
        seq.append((c.offset, 2, 0xFFFF))
        if c.id == R.CAP_ID_MSI:
            m = MsiCap(cs.raw, c.offset)
            seq += [(c.offset + m.address_offset, 4, 0xFEE01004), (c.offset + m.data_offset, 2, 0x4321)]
        elif c.id == R.CAP_ID_MSIX:
            seq += [(c.offset + R.MSIX_FLAGS, 2, R.MSIX_FLAGS_ENABLE | R.MSIX_FLAGS_MASKALL),
                    (c.offset + R.MSIX_TABLE, 4, 0xFFFFFFFF), (c.offset + R.MSIX_PBA, 4, 0xFFFFFFFF)]
        elif c.id == R.CAP_ID_PM:       # power state D0 (unchanged): only the PME bits, virtualised read-only
            seq.append((c.offset + R.PM_CTRL, 2, R.PM_CTRL_PME_ENABLE | R.PM_CTRL_PME_STATUS))
        elif c.id == R.CAP_ID_EXP:
            seq += [(c.offset + R.EXP_DEVSTA, 2, 0xFFFF), (c.offset + R.EXP_LNKCTL, 2, c.lnkctl ^ R.EXP_LNKCTL_CCC)]
    seq += [(c.offset, 4, 0xFFFFFFFF) for c in cs.extended_capabilities]
    return seq


def test_replay_config_writes_answer_like_vfio_pci(live):
    name, dev = live
    rec = capture_device(dev, bar_bytes=256)
    before = dev.config.read(0, dev.config.size)
    writes = kernel_decided_writes(ConfigSpace(before))
    assert len(writes) > 12
    got_live, got_replay = [], []
    try:
        with open_replay(F.parse(F.write(rec)), name=dev.name) as rdev:
            for off, size, value in writes:
                for d, out in ((dev, got_live), (rdev, got_replay)):
                    d.config.write(off, value.to_bytes(size, "little"))
                    out.append((off, d.config.read(off, size).hex()))
    finally:
        for off, size, _v in writes:       # put the live registers back (BARs, ROM, line, MSI)
            dev.config.write(off, before[off:off + size])
    assert got_replay == got_live, name
    assert dev.config.read(0, R.STD_HEADER_SIZEOF) == before[:R.STD_HEADER_SIZEOF]
