"""Capture and replay against the live vfio-pci devices of the harness guest.

For QEMU's edu and nvme bound to vfio-pci: a fresh capture replays with the
same answers as the live device gives to the same calls
(:func:`tests.record_oracle.answers`), and the shipped captures in records/
still describe what this kernel shows.
"""

from __future__ import annotations

import copy
import json
import os
import platform

import pytest

import vfio
from vfio import uapi
from vfio.record import format as F
from tests.record_oracle import answers, main as oracle_main
from vfio.record.capture import capture_device
from vfio.record.cli import main as cli_main
from vfio.pci.config import walk_capabilities, walk_extended_capabilities
from vfio.record.replay import open_replay

pytestmark = pytest.mark.kernel

from tests.paths import REPO as ROOT


def comparable(rec: F.DeviceRecord, with_config: bool = True) -> list:
    """Without NOTE (timestamps), PCI and physical addresses (placement may differ)
    and BAR contents (registers other tests changed); config space reduced to
    what other tests cannot change (IDs, class, capability layout) unless
    ``with_config``."""
    out = []
    for r in rec.records:
        if type(r) in (F.Note, F.PciInfo):
            continue
        if type(r) is F.Region:
            kids = []
            for c in r.children:
                if type(c) is F.RegionData:
                    if r.is_config_space and with_config:
                        kids.append(c)
                    elif r.is_config_space:
                        cfg = bytes(c.data)
                        kids.append((cfg[0:4], cfg[8:16], walk_capabilities(cfg), walk_extended_capabilities(cfg)))
                    elif r.flags & F.REGION_ROM:
                        kids.append(c)
                else:
                    kids.append(c)
            r = (r.index, r.flags & ~F.REGION_PHYS, r.offset, r.size, kids)
        out.append(r)
    return out


@pytest.fixture(params=["edu", pytest.param("nvme", marks=pytest.mark.vfio_nvme)])
def live(request):
    bdf = request.getfixturevalue(f"{request.param}_bdf")
    with vfio.open_pci_device(bdf) as dev:
        yield request.param, dev


def test_replay_of_fresh_capture_answers_like_live(live):
    name, dev = live
    rec = capture_device(dev, bar_bytes=256)
    want = json.loads(json.dumps(answers(dev)))
    with open_replay(F.parse(F.write(rec)), name=dev.name) as rdev:
        got = json.loads(json.dumps(answers(rdev)))
    for section in want:
        assert got[section] == want[section], f"{name}: {section}"


#: Whether the machine's MSI parent irq domain allocates MSI-X vectors dynamically
#: (MSI_FLAG_PCI_MSIX_ALLOC_DYN, Linux 6.12): x86's vector domain and the interrupt
#: remapping domains above it do, arm64's GICv3 ITS does not.
_MSIX_ALLOC_DYN = {"x86_64": True, "aarch64": False}


def _msix_noresize(machine: str, msix_count: int) -> bool:
    """vfio-pci's VFIO_IRQ_INFO_NORESIZE for the MSI-X index: set unless the device has
    MSI-X and the interrupt controller can add vectors to it while enabled
    (vfio_pci_core's ``has_dyn_msix = pci_msix_can_alloc_dyn(pdev)``)."""
    return not (msix_count > 0 and _MSIX_ALLOC_DYN[machine])


def _as_on(rec: F.DeviceRecord, machine: str) -> F.DeviceRecord:
    """``rec`` with the one IRQ-info fact the interrupt controller decides (MSI-X's
    NORESIZE) set as ``machine``'s would report it; everything else unchanged."""
    out = copy.deepcopy(rec)
    for r in out.records:
        if type(r) is F.Interrupt and r.index == uapi.VFIO_PCI_MSIX_IRQ_INDEX:
            r.flags &= ~uapi.VFIO_IRQ_INFO_NORESIZE
            if _msix_noresize(machine, r.count):
                r.flags |= uapi.VFIO_IRQ_INFO_NORESIZE
    return out


def test_shipped_capture_matches_this_kernel(live):
    """The shipped records were captured in an x86 guest (q35, intel-iommu).  On that
    machine they must match exactly; on another, everything but MSI-X's NORESIZE flag
    (the interrupt controller's fact) must match, and that flag must be what this
    machine's interrupt controller implies."""
    name, dev = live
    fresh = capture_device(dev, bar_bytes=256)
    shipped = F.load(os.path.join(ROOT, "records", f"{name}.vfiorec"))
    # the rule describes the capture's own machine (else the shipped file is not what we think)
    assert comparable(_as_on(shipped, "x86_64"), with_config=False) == comparable(shipped, with_config=False)
    want = _as_on(shipped, platform.machine())
    assert comparable(fresh, with_config=False) == comparable(want, with_config=False)


def test_capture_is_deterministic(live):
    _, dev = live
    assert comparable(capture_device(dev)) == comparable(capture_device(dev))


def test_cli_capture(edu_bdf, tmp_path):
    out = tmp_path / "edu.vfiorec"
    ans = tmp_path / "edu.json"
    assert cli_main([edu_bdf, "-o", str(out)]) == 0
    assert oracle_main([edu_bdf, "-o", str(ans)]) == 0       # was vfio-capture's --answers
    rec = F.load(out)
    assert rec.pci_info.bdf == edu_bdf
    with open_replay(out) as rdev:
        assert json.loads(json.dumps(answers(rdev))) == json.loads(ans.read_text())


def test_cli_sysfs_capture_of_vfio_device(edu_bdf, tmp_path):
    """--sysfs works on any device; for edu it agrees with VFIO on regions and IRQs."""
    out = tmp_path / "edu-sysfs.vfiorec"
    assert cli_main([edu_bdf, "-o", str(out), "--sysfs"]) == 0
    syn = F.load(out)
    with vfio.open_pci_device(edu_bdf) as dev:
        real = capture_device(dev)
    assert {i: (r.vfio_flags, r.size, r.offset) for i, r in syn.regions.items() if i != 7} == \
           {i: (r.vfio_flags, r.size, r.offset) for i, r in real.regions.items() if i != 7}
    assert {i: (r.flags, r.count) for i, r in syn.interrupts.items()} == \
           {i: (r.flags, r.count) for i, r in real.interrupts.items()}
