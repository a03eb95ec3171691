"""The passthrough device model on replayed devices (records/*.vfiorec) and synthetic records.

The guest's view is driven exactly as a guest OS would: config cycles through
the virtual config space, MMIO through the BAR addresses it programmed, MSI-X
table writes through the trapped BAR pages.  The replay backend plays the
device raising interrupts (``backend.fire``) and shows what the model
programmed with SET_IRQS (``backend.irq_state``).
"""

from __future__ import annotations

import errno
import json
import mmap
import struct

import pytest

from vfio import uapi
from vfio.dma import DmaSpace
from vfio.errors import RegionAccessError, UnsafeOperationError, VfioError
from vfio.pci import regs as R
from vfio.pci.passthrough import PassthroughDevice, StateMismatchError
from vfio.record import format as F
from vfio.record.pytest_plugin import vfio_replay_device  # noqa: F401  (fixture, also via the entry point)

PAGE = mmap.PAGESIZE
INTX, MSI, MSIX = uapi.VFIO_PCI_INTX_IRQ_INDEX, uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_PCI_MSIX_IRQ_INDEX
EDU, NVME, E1000E = "records/edu.vfiorec", "records/nvme.vfiorec", "records/e1000e.vfiorec"


@pytest.fixture
def model(vfio_replay_device):
    made = []

    def factory(source, **kw):
        pt = PassthroughDevice(vfio_replay_device(source), **kw)
        made.append(pt)
        return pt

    yield factory
    while made:
        made.pop().close()


class FakeDmaSpace(DmaSpace):
    """A DMA space that records the IOMMU calls instead of making them."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def iova_ranges(self):
        return [(0, (1 << 39) - 1)]

    @property
    def min_page_size(self):
        return PAGE

    def _map(self, vaddr, iova, size, readable, writable):
        self.calls.append(("map", iova, size))

    def _unmap(self, iova, size):
        self.calls.append(("unmap", iova, size))
        return size


def msi_record(maskable=True, vectors_log2=2, kernel_vectors=4) -> F.DeviceRecord:
    """A conventional PCI function with a maskable multi-message 64-bit MSI, an MSI-X table in the
    sparse hole of a 64-bit BAR (table page 1, PBA page 2, pages 0 and 3 mmap-able) and an I/O BAR."""
    cfg = bytearray(256)
    struct.pack_into("<HHHH", cfg, 0, 0x1AF4, 0x10FF, 0x0000, R.STATUS_CAP_LIST)
    struct.pack_into("<I", cfg, 0x10, 0xFE000000)                  # BAR0 mem32, 64 KiB
    struct.pack_into("<I", cfg, 0x14, 0xFD000004)                  # BAR1 mem64, 16 KiB
    struct.pack_into("<I", cfg, 0x1C, 0x0000C001)                  # BAR3 I/O, 32 bytes
    cfg[0x34] = 0x40
    cfg[0x3D] = 1
    ctl = R.MSI_FLAGS_64BIT | (vectors_log2 << 1) | (R.MSI_FLAGS_MASKBIT if maskable else 0)
    cfg[0x40:0x44] = bytes([0x05, 0x60]) + struct.pack("<H", ctl)
    cfg[0x60:0x62] = bytes([0x11, 0x00])
    struct.pack_into("<HII", cfg, 0x62, 7, 1 | PAGE, 1 | 2 * PAGE)   # 8 vectors, table/PBA in BAR1
    sparse = struct.pack("<HHIII", uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 0, 2, 0) + \
        struct.pack("<QQQQ", 0, PAGE, 3 * PAGE, PAGE)
    rwm, rw = 7, 3
    return F.DeviceRecord([
        F.PciInfo(0, 0, 5, 0),
        F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_RESET, 9, 5),
        F.Region(0, rwm, 0, 0x10000, 0, [F.RegionInfo(rwm)]),
        F.Region(1, rwm, 1 << 40, 4 * PAGE, 0, [F.RegionInfo(rwm | uapi.VFIO_REGION_INFO_FLAG_CAPS, sparse)]),
        F.Region(2, 0, 2 << 40, 0),
        F.Region(3, rw, 3 << 40, 32, 0, [F.RegionInfo(rw)]),
        F.Region(4, 0, 4 << 40, 0),
        F.Region(5, 0, 5 << 40, 0),
        F.Region(6, 0, 6 << 40, 0),
        F.Region(7, rw, 7 << 40, 256, 0, [F.PciConfigSpace(), F.RegionInfo(rw), F.RegionData(0, bytes(cfg))]),
        F.Interrupt(0, 0x7, 1),
        F.Interrupt(1, 0x9, kernel_vectors),
        F.Interrupt(2, 0x9, 8),
    ])


def size_bar(pt, index):
    """What a guest's BAR sizing sees: write all ones, read back, restore."""
    off = R.BASE_ADDRESS_0 + 4 * index
    old = pt.config_read(off, 4)
    pt.config_write(off, 4, 0xFFFFFFFF)
    mask = pt.config_read(off, 4)
    pt.config_write(off, 4, old)
    return mask


def enable_msix(pt, maskall=False):
    off = pt.config.find_capability(R.CAP_ID_MSIX)
    ctl = pt.config_read(off + R.MSIX_FLAGS, 2) & ~R.MSIX_FLAGS_MASKALL
    pt.config_write(off + R.MSIX_FLAGS, 2, ctl | R.MSIX_FLAGS_ENABLE | (R.MSIX_FLAGS_MASKALL if maskall else 0))
    return off


def program_msix_vector(pt, bar, table_off, n, address, data, masked=False):
    e = table_off + 16 * n
    bar.write32(e + 0, address & 0xFFFFFFFF)
    bar.write32(e + 4, address >> 32)
    bar.write32(e + 8, data)
    bar.write32(e + 12, 1 if masked else 0)


# ---- config space and BARs ------------------------------------------------------------------
def test_bar_sizing_is_emulated_and_never_reaches_the_device(model):
    pt = model(EDU)
    raw_bar0 = pt.device.config.read32(0x10)
    assert size_bar(pt, 0) == 0xFFF00000                     # 1 MiB, 32-bit, non-prefetchable
    pt.config_write(0x10, 4, 0xC0000000)
    assert pt.config_read(0x10, 4) == 0xC0000000
    assert pt.bar(0).address == 0xC0000000
    assert pt.device.config.read32(0x10) == raw_bar0           # the host's BAR is untouched
    for slot in range(1, 6):                                  # unimplemented slots read 0 and ignore writes
        pt.config_write(0x10 + 4 * slot, 4, 0xFFFFFFFF)
        assert pt.config_read(0x10 + 4 * slot, 4) == 0


def test_64bit_bar_sizing(model):
    pt = model(NVME)
    assert size_bar(pt, 0) == 0xFFFFC004                      # 16 KiB, 64-bit
    assert size_bar(pt, 1) == 0xFFFFFFFF                      # upper dword: all address bits
    pt.config_write(0x10, 4, 0x00000004)
    pt.config_write(0x14, 4, 0x00000001)
    assert pt.bar(0).address == 0x1_0000_0000


def test_mmio_through_guest_programmed_bar(model):
    pt = model(EDU)
    pt.config_write(0x10, 4, 0xC0000000)
    pt.config_write(R.COMMAND, 2, pt.command & ~R.COMMAND_MEMORY)
    with pytest.raises(RegionAccessError, match="no BAR with decode enabled"):
        pt.mmio_read(0xC0000000, 4)
    pt.config_write(R.COMMAND, 2, pt.command | R.COMMAND_MEMORY | R.COMMAND_MASTER)
    assert pt.mmio_read(0xC0000000, 4) == 0x010000ED
    with pytest.raises(RegionAccessError):
        pt.mmio_read(0xC0000000 + (1 << 20), 4)               # just past the BAR
    # Command is passed through: bus mastering reaches the device's config region
    assert pt.device.config.read16(R.COMMAND) & R.COMMAND_MASTER


def test_io_bar_is_trapped_and_dispatched_by_port(model):
    pt = model(msi_record())
    bar = pt.bar(3)
    assert bar.is_io and bar.direct_areas == [] and bar.trapped_areas == [(0, 32)]
    pt.config_write(0x1C, 4, 0xD000)
    pt.config_write(R.COMMAND, 2, R.COMMAND_IO)
    pt.io_write(0xD004, 4, 0xCAFEF00D)
    assert pt.device.region(3).read32(4) == 0xCAFEF00D
    assert pt.io_read(0xD004, 4) == 0xCAFEF00D


def test_msix_pages_are_trapped_and_the_rest_mapped_direct(model):
    pt = model(NVME)
    bar = pt.bar(0)
    # nvme: table at 0x2000 (65 entries), PBA at 0x3000: the doorbell page 0x1000 stays direct
    assert bar.direct_areas == [(0, 0x2000)]
    assert bar.trapped_areas == [(0x2000, 0x2000)]
    areas = bar.map_direct()
    assert [(a.offset, a.size) for a in areas] == [(0, 0x2000)]
    assert areas[0].host_address != 0
    # a byte of a trapped page outside the table goes to the device
    bar.write32(0x2800, 0x5A5A5A5A)
    assert pt.device.region(0).read32(0x2800) == 0x5A5A5A5A
    # the table itself is emulated: the device's table bytes do not change
    bar.write32(0x2000, 0xFEE00000)
    assert bar.read32(0x2000) == 0xFEE00000
    assert pt.device.region(0).read32(0x2000) != 0xFEE00000


def test_sparse_mmap_hole_and_msix_pages(model):
    pt = model(msi_record())
    bar = pt.bar(1)
    assert bar.kind == "mem64"
    assert bar.direct_areas == [(0, PAGE), (3 * PAGE, PAGE)]
    assert bar.trapped_areas == [(PAGE, 2 * PAGE)]
    with pytest.raises(RegionAccessError, match="DWORD/QWORD"):
        bar.read(PAGE + 2, 2)                                   # table accesses are 4 or 8 bytes


def test_capabilities_can_be_restricted(model):
    pt = model(NVME, capabilities=[R.CAP_ID_MSIX])
    assert [c for _o, c in pt.config.capabilities()] == [R.CAP_ID_MSIX]
    full = model(NVME)
    assert sorted(c for _o, c in full.config.capabilities()) == [R.CAP_ID_PM, R.CAP_ID_EXP, R.CAP_ID_MSIX]


# ---- interrupts -----------------------------------------------------------------------------
def test_intx_with_automask_unmask_and_resample(model):
    pt = model(EDU)
    intx = pt.enable_intx()
    be = pt.device.backend
    assert pt.irq_mode == "intx" and be.irq_state(INTX).enabled and be.irq_state(INTX).unmask_eventfd
    assert be.fire(INTX)
    assert intx.eventfd.read() == 1
    assert not be.fire(INTX)                      # automasked: stays pending
    assert intx.eventfd.read() == 0
    pt.intx_unmask()                              # the guest's EOI
    assert intx.eventfd.read() == 1               # the pending level fires again at unmask
    intx.resample.signal()                        # KVM's resamplefd path unmasks as well
    assert be.fire(INTX) and intx.eventfd.read() == 1


def test_msi_enable_from_guest_write_switches_from_intx_and_back(model):
    pt = model(EDU)
    be = pt.device.backend
    pt.enable_intx()
    off = pt.config.find_capability(R.CAP_ID_MSI)
    pt.config_write(off + R.MSI_ADDRESS_LO, 4, 0xFEE01000)
    pt.config_write(off + R.MSI_DATA_64, 2, 0x4041)
    routed = []
    pt.route_listeners.append(lambda index, n: routed.append((index, n)))
    pt.config_write(off + R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE)
    assert pt.irq_mode == "msi"
    assert be.irq_state(MSI).triggers == [True] and not be.irq_state(INTX).enabled
    assert routed == [(MSI, 0)]
    assert (pt.msi_message(0).address, pt.msi_message(0).data) == (0xFEE01000, 0x4041)
    assert be.fire(MSI, 0)
    assert pt.msi_vector(0).eventfd.read() == 1
    pt.config_write(off + R.MSI_FLAGS, 2, 0)
    assert pt.irq_mode == "intx" and be.irq_state(INTX).enabled and not be.irq_state(MSI).enabled


def test_msi_multiple_messages_and_per_vector_masking(model):
    pt = model(msi_record())
    be = pt.device.backend
    off = pt.config.find_capability(R.CAP_ID_MSI)
    pt.config_write(off + R.MSI_DATA_64, 2, 0x20)
    pt.config_write(off + R.MSI_MASK_64, 4, 0b0100)                  # vector 2 masked
    pt.config_write(off + R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE | (2 << 4))   # 4 messages
    assert be.irq_state(MSI).triggers == [True] * 4
    assert [pt.msi_message(n).data for n in range(4)] == [0x20, 0x21, 0x22, 0x23]
    assert be.fire(MSI, 2)                                           # the kernel signals the masked route
    assert pt.msi_vector(2).eventfd.read() == 0
    assert pt.config_read(off + R.MSI_PENDING_64, 4) == 0b0100      # pending bit shows in the capability
    pt.config_write(off + R.MSI_MASK_64, 4, 0)                       # unmask: the pending one is delivered
    assert pt.msi_vector(2).eventfd.read() == 1
    assert pt.config_read(off + R.MSI_PENDING_64, 4) == 0
    assert be.fire(MSI, 3) and pt.msi_vector(3).eventfd.read() == 1


def test_msi_vector_count_is_limited_by_the_kernel(model):
    pt = model(msi_record(kernel_vectors=2))
    off = pt.config.find_capability(R.CAP_ID_MSI)
    pt.config_write(off + R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE | (2 << 4))
    assert len(pt.msi_vectors) == 2
    assert pt.device.backend.irq_state(MSI).triggers == [True, True]


def test_msix_masking_pba_and_unmask_delivery(model):
    pt = model(NVME)
    be = pt.device.backend
    bar = pt.bar(0)
    enable_msix(pt)
    assert pt.irq_mode == "msix"
    st = be.irq_state(MSIX)
    assert st.triggers == [True] * 65                   # every vector routed (masked ones to pending)
    v0 = pt.msix_vector(0)
    assert v0.masked                                    # table entries come out of reset masked
    assert be.fire(MSIX, 0)
    assert v0.eventfd.read() == 0
    assert bar.read64(0x3000) == 1                      # PBA bit 0
    bar.write32(0x3000, 0)                              # the PBA is read-only
    assert bar.read64(0x3000) == 1
    program_msix_vector(pt, bar, 0x2000, 0, 0xFEE00000, 0x31)
    assert not v0.masked
    assert v0.eventfd.read() == 1                       # the pending interrupt, delivered at unmask
    assert bar.read64(0x3000) == 0
    assert pt.msix_message(0).data == 0x31
    assert be.fire(MSIX, 0) and v0.eventfd.read() == 1
    # function mask masks every vector without touching the table
    enable_msix(pt, maskall=True)
    assert v0.masked and not pt.msix_table.masked(0)
    assert be.fire(MSIX, 0) and v0.eventfd.read() == 0
    enable_msix(pt, maskall=False)
    assert v0.eventfd.read() == 1


def test_msix_route_listener_sees_table_writes(model):
    pt = model(msi_record())
    seen = []
    pt.route_listeners.append(lambda index, n: seen.append((index, n, pt.msix_message(n))))
    bar = pt.bar(1)
    bar.write64(PAGE + 16 * 3, 0xFEE0_2000)              # QWORD write of address lo+hi of vector 3
    assert seen and seen[-1][:2] == (MSIX, 3) and seen[-1][2].address == 0xFEE02000
    bar.write32(PAGE + 16 * 3, 0xFEE0_2000)              # same value: no change, no notification
    assert len(seen) == 1


def test_msi_and_msix_vectors_outside_capabilities_are_refused(model):
    pt = model(EDU)
    with pytest.raises(KeyError, match="no MSI-X"):
        pt.msix_vector(0)
    with pytest.raises(VfioError) as ei:
        pt.intx_unmask()
    assert ei.value.errno == errno.EINVAL


# ---- DMA ------------------------------------------------------------------------------------
def test_guest_memory_is_mapped_at_iova_equal_gpa(model):
    space = FakeDmaSpace()
    pt = model(EDU, dma=space)
    m = pt.map_guest_memory(0x200000, 0x3000)
    assert m.iova == 0x200000 and space.calls == [("map", 0x200000, 0x3000)]
    pt.guest_write(0x201000, b"hello")
    assert pt.guest_read(0x201000, 5) == b"hello"
    assert m.buffer.read(0x1000, 5) == b"hello"
    with pytest.raises(RegionAccessError, match="not inside mapped guest memory"):
        pt.guest_read(0x203000 - 2, 4)
    pt.close()
    assert space.calls[-1] == ("unmap", 0x200000, 0x3000)


def test_no_dma_space_is_a_clear_error(model):
    pt = model(EDU)                         # a replayed device has no DMA space
    with pytest.raises(UnsafeOperationError, match="no DMA space"):
        pt.map_guest_memory(0x200000, 0x1000)


# ---- state and reset ------------------------------------------------------------------------
def _guest_setup_nvme(pt):
    pt.config_write(0x10, 4, 0xC0000004)
    pt.config_write(0x14, 4, 0)
    pt.config_write(R.COMMAND, 2, R.COMMAND_MEMORY | R.COMMAND_MASTER)
    enable_msix(pt)
    program_msix_vector(pt, pt.bar(0), 0x2000, 1, 0xFEE00000, 0x41)


def test_state_round_trip_into_a_fresh_model(model):
    a = model(NVME)
    _guest_setup_nvme(a)
    assert a.device.backend.fire(MSIX, 5)               # vector 5 still masked: pending
    state = json.loads(json.dumps(a.get_state()))
    b = model(NVME)
    b.set_state(state)
    # an accessor: nothing was programmed yet
    assert b.irq_mode == "none" and not b.device.backend.irq_state(MSIX).enabled
    assert b.bar(0).address == 0xC0000000
    assert b.msix_message(1).data == 0x41
    assert b.bar(0).read64(0x3000) == 1 << 5
    b.resume()
    be = b.device.backend
    assert b.irq_mode == "msix" and be.irq_state(MSIX).enabled
    assert b.device.config.read16(R.COMMAND) & R.COMMAND_MASTER
    assert be.fire(MSIX, 1) and b.msix_vector(1).eventfd.read() == 1
    assert be.fire(MSIX, 2) and b.msix_vector(2).eventfd.read() == 0
    assert b.get_state()["config"] == a.get_state()["config"]


def test_state_from_another_device_or_capability_set_is_refused(model):
    nvme_state = model(NVME).get_state()
    edu = model(EDU)
    before = edu.get_state()
    with pytest.raises(StateMismatchError, match="vendor_id"):
        edu.set_state(nvme_state)
    restricted = model(NVME, capabilities=[R.CAP_ID_MSIX, R.CAP_ID_EXP])
    with pytest.raises(StateMismatchError, match="capabilities"):
        restricted.set_state(nvme_state)
    bad = dict(nvme_state, version=99)
    with pytest.raises(StateMismatchError, match="version"):
        model(NVME).set_state(bad)
    assert edu.get_state() == before                       # a refused load changes nothing


def test_reset_returns_the_model_to_power_on(model):
    pt = model(NVME)
    _guest_setup_nvme(pt)
    pt.enable_intx()
    assert pt.irq_mode == "msix"
    pt.reset()
    be = pt.device.backend
    assert be.reset_count == 1
    assert pt.irq_mode == "intx" and be.irq_state(INTX).enabled and not be.irq_state(MSIX).enabled
    assert pt.msix_table.masked(1) and pt.msix_message(1).data == 0
    off = pt.config.find_capability(R.CAP_ID_MSIX)
    assert not pt.config_read(off + R.MSIX_FLAGS, 2) & R.MSIX_FLAGS_ENABLE
    assert pt.bar(0).address != 0xC0000000


def test_reset_of_a_device_without_function_reset(model):
    pt = model(EDU)
    off = pt.config.find_capability(R.CAP_ID_MSI)
    pt.config_write(off + R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE)
    with pytest.raises(VfioError) as ei:
        pt.reset()
    assert ei.value.errno == errno.ENOTTY and "device_reset=False" in str(ei.value)
    assert pt.irq_mode == "msi"                            # refused before anything changed
    pt.config_write(R.COMMAND, 2, R.COMMAND_MEMORY | R.COMMAND_MASTER)
    pt.reset(device_reset=False)
    assert pt.irq_mode == "none" and not pt.config_read(off + R.MSI_FLAGS, 2) & R.MSI_FLAGS_ENABLE
    # decode and bus mastering are stopped in the device, as QEMU's pre-reset does
    assert not pt.device.config.read16(R.COMMAND) & (R.COMMAND_MEMORY | R.COMMAND_MASTER)
    assert pt.command == pt.device.config.read16(R.COMMAND)


def test_close_tears_down_interrupts_and_eventfds(model, vfio_replay_device):
    dev = vfio_replay_device(NVME)
    pt = PassthroughDevice(dev)
    enable_msix(pt)
    vec = pt.msix_vector(0)
    assert dev.backend.irq_state(MSIX).enabled
    pt.close()
    assert not dev.backend.irq_state(MSIX).enabled
    assert vec.eventfd.closed
    assert not dev.closed                                   # not owned


def test_every_shipped_record_models_cleanly(model):
    for path, bars in ((EDU, [0]), (NVME, [0]), (E1000E, [0, 1, 2, 3])):
        pt = model(path)
        assert sorted(pt.bars) == bars
        for b in pt.bars.values():
            # direct and trapped areas tile the BAR exactly
            parts = sorted(b.direct_areas + b.trapped_areas)
            assert sum(s for _o, s in parts) == b.size
            assert all(o1 + s1 <= o2 for (o1, s1), (o2, _s2) in zip(parts, parts[1:]))
