"""The shipped captures of device-tree devices, replayed on the host.

``records/virtio-mmio-arm64.vfiorec`` (an empty virtio-mmio transport,
vfio-platform) and ``records/pl031-arm64.vfiorec`` (the PL031 RTC, vfio-amba)
were captured in the arm64 guest (``tools/vfio-harness --arch arm64 --iommu
none``: QEMU virt, no-IOMMU mode) after ``vfio-assign`` bound them, with
``capture_device(dev, bar_bytes=...)`` (0x100 and 0x1000 bytes).  Each
region and interrupt carries the DTPATH of the device's node and its DTINDEX
(``reg`` 0, ``interrupts`` 0); replay serves them through the same
:class:`~vfio.device.Device` API as the live device
(tests/kernel/test_platform_devices.py checks the live side).
"""

from __future__ import annotations

import errno
import io
import json
import os

import pytest

from tests.paths import REPO
from vfio import uapi
from vfio.errors import RegionAccessError, VfioError
from vfio.host import inspect
from vfio.platform import DtOrigin, DtProp
from vfio.record import format as F
from vfio.record.replay import open_replay

VIRTIO = os.path.join(REPO, "records", "virtio-mmio-arm64.vfiorec")
PL031 = os.path.join(REPO, "records", "pl031-arm64.vfiorec")
VM_NODE, RTC_NODE = "/virtio_mmio@a000000", "/pl031@9010000"


def _dt(rec) -> list:
    return [(c.path if type(c) is F.DtPath else (c.prop_type, c.prop_index))
            for c in rec.children if type(c) in (F.DtPath, F.DtIndex)]


@pytest.mark.parametrize("path, node, addr", [(VIRTIO, VM_NODE, 0xA000000), (PL031, RTC_NODE, 0x9010000)])
def test_capture_names_each_region_and_interrupt_by_its_device_tree_entry(path, node, addr):
    rec = F.load(path)
    assert _dt(rec.regions[0]) == [node, (F.DT_PROP_REG, 0)]
    assert _dt(rec.interrupts[0]) == [node, (F.DT_PROP_INTERRUPTS, 0)]
    assert rec.regions[0].flags & F.REGION_PHYS and rec.regions[0].addr == addr
    assert rec.pci_info is None


def test_virtio_mmio_replays_through_the_device_api():
    with open_replay(VIRTIO) as dev:
        assert dev.info.is_platform and not dev.info.is_pci and not dev.info.can_reset
        r = dev.region(0)
        assert (r.size, r.info.offset, r.info.mmappable) == (0x200, 0, False)
        assert r.read32(0) == 0x74726976 and r.read32(4) in (1, 2) and r.read32(8) == 0
        assert r.read32(0xC) == 0x554D4551
        assert dev.region_origin(0) == DtOrigin(VM_NODE, DtProp.REG, 0)
        assert dev.irq_origin(0) == DtOrigin(VM_NODE, DtProp.INTERRUPTS, 0)
        assert dev.region_origin(1) is None
        with pytest.raises(RegionAccessError):
            r.map()                             # not MMAP: a 0x200-byte window is no whole page
        q = dev.irq_info(0)
        assert q.eventfd and q.count == 1 and not q.maskable and not q.automasked      # edge
        vec = dev.enable_irq(0)
        assert dev.backend.fire(0) and vec[0].read() == 1
        with pytest.raises(VfioError) as ei:
            dev.unmask_irq(0)                   # as vfio_platform_set_irq_unmask answers
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioError) as ei:
            dev.reset()                         # no reset handler: no RESET flag
        assert ei.value.errno == errno.EINVAL


def test_pl031_replays_with_its_primecell_ids_and_a_level_interrupt():
    with open_replay(PL031) as dev:
        assert dev.info.flags & uapi.VFIO_DEVICE_FLAGS_AMBA
        r = dev.region(0)
        assert r.size == 0x1000 and r.info.mmappable
        ids = (0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
        assert tuple(r.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)) == ids
        with r.map() as m:
            assert m.read32(0xFF0) & 0xFF == 0x0D
        assert dev.region_origin(0) == DtOrigin(RTC_NODE, DtProp.REG, 0)
        q = dev.irq_info(0)
        assert q.maskable and q.automasked
        vec = dev.enable_irq(0)
        unmask = dev.unmask_eventfd(0)
        assert dev.backend.fire(0) and vec[0].read() == 1
        assert not dev.backend.fire(0)          # automasked: pending until unmasked
        unmask.signal()
        assert dev.backend.irq_state(0).masked == [True]  # delivered the pending one, masked again
        assert vec[0].read() == 1


def test_vfio_inspect_shows_the_device_tree_origin_of_a_record():
    out = io.StringIO()
    assert inspect.main([VIRTIO], out=out) == 0
    text = out.getvalue()
    assert "[platform]" in text
    assert f"region 0: size 0x200 at offset 0x0 [read write] from {VM_NODE} reg[0]" in text
    assert f"irq 0: count 1 [eventfd] from {VM_NODE} interrupts[0]" in text
    out = io.StringIO()
    assert inspect.main(["--json", PL031], out=out) == 0
    v = json.loads(out.getvalue())["vfio"]
    assert "amba" in v["flag_names"]
    assert v["regions"][0]["dt_origin"] == {"path": RTC_NODE, "property": "reg", "index": 0}
    assert v["irqs"][0]["dt_origin"] == {"path": RTC_NODE, "property": "interrupts", "index": 0}


def test_replay_takes_vfio_platforms_mask_eventfd():
    from vfio.irq import EventFd
    with open_replay(PL031) as dev:
        vec = dev.enable_irq(0)
        with EventFd("mask") as mask:
            dev.set_irqs(0, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_MASK, 0, 1,
                         uapi.irq_set_data_eventfds([mask.fd]))
            mask.signal()
            assert not dev.backend.fire(0) and vec[0].read() == 0       # masked by the eventfd: pending
            dev.unmask_irq(0)
            assert vec[0].read() == 1
    with open_replay(os.path.join(REPO, "records", "edu.vfiorec")) as dev:
        dev.enable_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)
        with EventFd("mask") as mask, pytest.raises(VfioError) as ei:
            dev.set_irqs(uapi.VFIO_PCI_INTX_IRQ_INDEX, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_MASK,
                         0, 1, uapi.irq_set_data_eventfds([mask.fd]))
        assert ei.value.errno == errno.ENOTTY       # vfio-pci has no mask eventfd
