"""The fd layer above the backend seam, on replayed devices and synthetic buffers.

The real-kernel behaviour is proved in tests/kernel/test_fd_layer.py; here the
same Device/Region/IRQ code runs over the replay backend (shipped captures of
QEMU's edu and nvme) and over hand-built info buffers, to cover what the
kernel never sends (corrupt capability chains, growing argsz, ...).
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct

import pytest

import vfio
from vfio import uapi
from vfio.backend import DeviceBackend
from vfio.device import Device, MsixMappableCap, SparseMmapCap, UnknownCap, parse_region_info
from vfio.dma import DmaBuffer, IovaAllocator
from vfio.errors import RegionAccessError, VfioError
from vfio.irq import Dispatcher, EventFd
from vfio.record.replay import open_replay

from tests.paths import RECORDS


@pytest.fixture
def edu():
    with open_replay(os.path.join(RECORDS, "edu.vfiorec")) as dev:
        yield dev


@pytest.fixture
def nvme():
    with open_replay(os.path.join(RECORDS, "nvme.vfiorec")) as dev:
        yield dev


# ---- info buffers and capability chains -------------------------------------------------

def _region_buf(caps: list, flags=uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_CAPS):
    """vfio_region_info followed by the given (id, version, payload) caps, chained in order."""
    hdr = ctypes.sizeof(uapi.vfio_region_info)
    body, offs = b"", []
    for _, _, payload in caps:
        offs.append(hdr + len(body))
        body += bytes(8) + payload
    buf = bytearray(bytes(uapi.vfio_region_info(hdr + len(body), flags, 0, offs[0] if offs else 0, 0x4000, 0)) + body)
    for i, (cid, ver, _) in enumerate(caps):
        nxt = offs[i + 1] if i + 1 < len(caps) else 0
        struct.pack_into("<HHI", buf, offs[i], cid, ver, nxt)
    return bytes(buf)


def test_parse_region_info_caps():
    sparse = struct.pack("<II", 2, 0) + struct.pack("<QQQQ", 0, 0x1000, 0x3000, 0x1000)
    buf = _region_buf([(uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, sparse),
                       (uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, b""),
                       (0x77, 3, b"\x01\x02\x03\x04")],
                      flags=uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_MMAP | uapi.VFIO_REGION_INFO_FLAG_CAPS)
    info = parse_region_info(buf, "test")
    assert info.cap(SparseMmapCap).areas == ((0, 0x1000), (0x3000, 0x1000))
    assert info.msix_mappable
    unknown = info.cap(UnknownCap)
    assert (unknown.id, unknown.version, unknown.data[8:]) == (0x77, 3, b"\x01\x02\x03\x04")
    assert info.mmap_areas() == [(0, 0x1000), (0x3000, 0x1000)]


def test_cap_chain_loop_and_bounds_are_errors():
    buf = bytearray(_region_buf([(1, 1, bytes(8)), (2, 1, bytes(8))]))
    second = struct.unpack_from("<I", buf, 32 + 4)[0]
    struct.pack_into("<I", buf, second + 4, 32)                 # second -> first: a loop
    with pytest.raises(ValueError, match="loops back to offset 0x20"):
        parse_region_info(bytes(buf), "loop")
    buf = bytearray(_region_buf([(1, 1, bytes(8))]))
    struct.pack_into("<I", buf, 12, 0x400)                        # cap_offset past the buffer
    with pytest.raises(ValueError, match="offset 0x400 is outside"):
        parse_region_info(bytes(buf), "bounds")
    buf = bytearray(_region_buf([(1, 1, struct.pack("<II", 50, 0))]))   # 50 areas, room for none
    with pytest.raises(ValueError, match="claims 50 areas"):
        parse_region_info(bytes(buf), "short")


class _GrowingBackend(DeviceBackend):
    """Answers like the kernel when a capability chain does not fit: argsz = size needed."""
    name = "synthetic"

    def __init__(self, full: bytes):
        self.full, self.calls = full, []

    def get_info(self, argsz):
        return bytes(uapi.vfio_device_info(argsz=argsz, flags=uapi.VFIO_DEVICE_FLAGS_PCI, num_regions=1, num_irqs=0))

    def get_region_info(self, index, argsz):
        self.calls.append(argsz)
        if index:
            raise VfioError(errno.EINVAL, f"VFIO_DEVICE_GET_REGION_INFO index {index} on {self.name}")
        if argsz < len(self.full):
            hdr = uapi.vfio_region_info.from_buffer_copy(self.full)
            hdr.argsz, hdr.cap_offset = len(self.full), 0
            return bytes(hdr) + bytes(argsz - ctypes.sizeof(hdr))
        return self.full

    def get_irq_info(self, index):
        raise VfioError(errno.EINVAL, "irq")

    def set_irqs(self, irq_set):
        raise VfioError(errno.EINVAL, "set")

    def reset(self):
        raise VfioError(errno.EINVAL, "reset")

    def pread(self, offset, length):
        return bytes(length)

    def pwrite(self, offset, data):
        return len(data)

    def mmap(self, offset, length, prot=0):
        raise VfioError(errno.EINVAL, "mmap")

    def close(self):
        pass


def test_region_info_retries_with_the_size_the_kernel_asks_for():
    full = _region_buf([(uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, 1, b"")])
    be = _GrowingBackend(full)
    with Device(be) as dev:
        info = dev.region_info(0)
        assert info.msix_mappable
        assert be.calls == [32, len(full)]
        with pytest.raises(VfioError) as ei:
            dev.region_info(1)
        assert ei.value.errno == errno.EINVAL and "index 1 on synthetic" in str(ei.value)


# ---- regions on a replayed device -------------------------------------------------------

def test_replayed_edu_regions_and_config(edu):
    assert edu.info.is_pci and edu.info.num_irqs == 5
    assert edu.region(0).info.size == 1 << 20
    assert edu.config.read16(0) == 0x1234 and edu.config.read16(2) == 0x11E8
    assert edu.config.read32(0) == 0x11E81234
    assert [r.index for r in edu.regions] == list(range(8))       # VGA refused, like vfio-pci
    with pytest.raises(RegionAccessError, match="outside"):
        edu.config.read32(edu.config.size)



def test_read_only_rom_refuses_writes_before_any_syscall():
    with open_replay(os.path.join(RECORDS, "e1000e.vfiorec")) as dev:
        rom = dev.region(uapi.VFIO_PCI_ROM_REGION_INDEX)
        assert rom.size and rom.info.readable and not rom.info.writable
        assert rom.read(0, 2) == b"\x55\xaa"                    # option ROM signature
        with pytest.raises(RegionAccessError, match="not writable"):
            rom.write(0, b"x")


def test_mapped_region_typed_accessors(edu):
    with edu.region(0).map() as bar:
        assert bar.read32(0) == 0x010000ED           # captured id register
        bar.write32(0x100, 0xDEADBEEF)
        assert bar.read32(0x100) == 0xDEADBEEF
        assert edu.region(0).read32(0x100) == 0xDEADBEEF     # the mapping and pread see one memfd
        bar.write64(0x108, 0x0123456789ABCDEF)
        assert bar.read64(0x108) == 0x0123456789ABCDEF
        assert bar.read16(0x10A) == 0x89AB and bar.read8(0x10F) == 0x01
        bar.write(0x200, b"\x01\x02\x03\x04\x05\x06\x07")
        assert bar.read(0x200, 7) == b"\x01\x02\x03\x04\x05\x06\x07"
        for bad in (-4, 1 << 20, (1 << 20) - 2):
            with pytest.raises(RegionAccessError):
                bar.read32(bad)
        with pytest.raises(RegionAccessError, match="naturally aligned"):
            bar.write32(0x102, 0)
    with pytest.raises(RegionAccessError, match="closed"):
        bar.read32(0)


def test_config_region_is_not_mappable(edu):
    with pytest.raises(RegionAccessError, match="no mmap-able area"):
        edu.config.map()


def test_nvme_msix_mappable_bar(nvme):
    bar0 = nvme.region(0).info
    assert bar0.msix_mappable and bar0.mmap_areas() == [(0, bar0.size)]


# ---- interrupts --------------------------------------------------------------------------

def test_irq_vectors_fire_mask_unmask(nvme):
    info = nvme.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
    assert info.count >= 2 and info.eventfd
    vec = nvme.enable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, count=2)
    assert nvme.backend.fire(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1)
    assert vec[1].wait(1) == 1 and vec[0].read() == 0
    nvme.trigger_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 0, 1)
    assert vec[0].wait(1) == 1
    with pytest.raises(VfioError) as ei:          # only one of INTx/MSI/MSI-X at a time
        nvme.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
    assert ei.value.errno == errno.EINVAL
    first = vec[0]
    nvme.disable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
    assert first.closed and not any(nvme.backend.irq_state(uapi.VFIO_PCI_MSIX_IRQ_INDEX).triggers)


def test_intx_automask_and_unmask(edu):
    vec = edu.enable_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)
    assert edu.backend.fire(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0)
    assert vec[0].wait(1) == 1
    assert not edu.backend.fire(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0)      # automasked: held back
    assert vec[0].read() == 0
    edu.unmask_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)
    assert vec[0].wait(1) == 1                                         # the pending one arrives


def test_set_irqs_validation_errors_name_the_call(edu):
    with pytest.raises(VfioError) as ei:
        edu.set_irqs(uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 3, 1)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(VfioError):
        edu.set_irqs(9, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)


def test_close_releases_eventfds_and_is_idempotent():
    dev = open_replay(os.path.join(RECORDS, "edu.vfiorec"))
    vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
    efd = vec[0]
    dev.close()
    dev.close()
    assert efd.closed and dev.closed
    with pytest.raises(VfioError, match="edu.vfiorec is closed|is closed") as ei:
        dev.region(0)
    assert ei.value.errno == errno.EBADF


def test_dispatcher_runs_handlers_per_vector():
    efds = [EventFd(f"v{i}") for i in range(4)]
    seen = []
    with Dispatcher() as d:
        d.add_all(efds, lambda e, n: seen.append((e.label, n)))
        efds[1].signal()
        efds[3].signal(2)
        assert d.poll(1) == 2
        assert sorted(seen) == [("v1", 1), ("v3", 2)]
        assert d.poll(0) == 0
    for e in efds:
        e.close()


def test_eventfd_async_wait():
    import asyncio

    async def main():
        e = EventFd("a")
        asyncio.get_running_loop().call_later(0.01, e.signal)
        n = await asyncio.wait_for(e.wait_async(), 2)
        e.close()
        return n
    assert asyncio.run(main()) == 1


# ---- DMA bookkeeping ---------------------------------------------------------------------

def test_iova_allocator_respects_ranges_holes_and_limits():
    a = IovaAllocator([(0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)])
    x = a.alloc(0x2000)
    assert x == 0x100000                                  # never below the 1 MiB floor
    y = a.alloc(0x1000)
    assert y == 0x102000
    with pytest.raises(ValueError, match="not free"):
        a.reserve(0x101000, 0x1000)
    with pytest.raises(ValueError, match="not free or not inside"):
        a.reserve(0xFEE00000, 0x1000)                     # the MSI hole
    a.free(x)
    assert a.alloc(0x1000) == 0x100000                    # freed space is reused
    with pytest.raises(MemoryError, match="below 0x200000"):
        a.alloc(0x200000, limit=0x200000)
    a.reserve(0, 0x1000)                                  # a caller may map guest RAM at 0
    big = a.alloc(0x10000000, align=0x10000000)
    assert big % 0x10000000 == 0 and not (big <= 0xFEE00000 < big + 0x10000000)


def test_dma_buffer_bounds_and_memfd():
    with DmaBuffer(100, memfd=True) as b:
        assert b.size == 4096 and b.fd >= 0 and b.vaddr
        b.write(4090, b"abcdef")
        assert b.read(4090, 6) == b"abcdef"
        with pytest.raises(RegionAccessError):
            b.write(4095, b"ab")
    with pytest.raises(ValueError):
        DmaBuffer(0)


def test_open_pci_device_errors_name_the_device(tmp_path):
    with pytest.raises(ValueError, match="not a PCI address"):
        vfio.open_pci_device("00:1f")
    with pytest.raises(VfioError) as ei:
        vfio.iommu_group_of("0000:7f:1f.7", sysfs=str(tmp_path))
    assert ei.value.errno == errno.ENODEV and "0000:7f:1f.7" in str(ei.value)
    (tmp_path / "0000:00:04.0").mkdir()
    with pytest.raises(VfioError, match="has no IOMMU group"):
        vfio.iommu_group_of("0000:00:04.0", sysfs=str(tmp_path))


def test_features_on_replay_are_not_supported(edu):
    # replay captures no features; like a kernel without them it answers ENOTTY
    assert not edu.supports_feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION, get=True)
    with pytest.raises(VfioError) as ei:
        edu.migration_state()
    assert ei.value.errno == errno.ENOTTY


def test_region_context_closes_its_mappings(edu):
    with edu.region(0) as r:
        bar = r.map()
        assert bar.read32(0) == 0x010000ED
    with pytest.raises(RegionAccessError, match="closed"):
        bar.read32(0)
