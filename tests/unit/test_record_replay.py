"""ReplayBackend: the kernel's semantics over a record, through vfio.device.Device."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct

import pytest

from vfio import uapi
from vfio.device import Device
from vfio.errors import VfioError
from vfio.irq import EventFd
from vfio.record import format as F
from vfio.record.pytest_plugin import vfio_replay_device  # noqa: F401  (fixture, also via the entry point)
from vfio.record.replay import ReplayBackend, open_replay

PAGE = mmap.PAGESIZE
TRIG = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER


def sparse_cap(areas) -> bytes:
    """A sparse-mmap capability as the kernel writes it after a 32-byte region info."""
    body = struct.pack("<HHIII", uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP, 1, 0, len(areas), 0)
    return body + b"".join(struct.pack("<QQ", o, s) for o, s in areas)


def device_record(reset=True) -> F.DeviceRecord:
    cfg = bytearray(256)
    struct.pack_into("<HHHH", cfg, 0, 0x1234, 0x11E8, 0x0103, 0x0010)      # id, COMMAND, STATUS(caps)
    struct.pack_into("<I", cfg, 0x10, 0xFE800000)                          # BAR0 mem32, 1 MiB
    struct.pack_into("<I", cfg, 0x14, 0xFEB0000C)                          # BAR1 mem64 prefetchable, 16 KiB
    struct.pack_into("<I", cfg, 0x1C, 0x0000C001)                          # BAR3 I/O, 32 bytes
    cfg[0x34] = 0x40
    cfg[0x3D] = 1                                                         # INTx pin A
    cfg[0x40:0x42] = bytes([0x05, 0x50])                                  # MSI cap -> 0x50
    cfg[0x50:0x52] = bytes([0x11, 0x00])                                  # MSI-X cap, end of list
    rw, rwm = 3, 7
    return F.DeviceRecord([
        F.PciInfo(0, 0, 3, 0),
        F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI | (uapi.VFIO_DEVICE_FLAGS_RESET if reset else 0), 9, 5),
        F.Region(0, rwm, 0, 1 << 20, 0, [F.RegionInfo(rwm), F.RegionData(0, struct.pack("<I", 0x010000ED))]),
        F.Region(1, rwm, 1 << 40, 0x4000, 0, [F.RegionInfo(rwm | uapi.VFIO_REGION_INFO_FLAG_CAPS,
                                                           sparse_cap([(0, PAGE), (2 * PAGE, PAGE)]))]),
        F.Region(2, 0, 2 << 40, 0),
        F.Region(3, rw, 3 << 40, 32, 0, [F.RegionInfo(rw)]),
        F.Region(4, 0, 4 << 40, 0),
        F.Region(5, 0, 5 << 40, 0),
        F.Region(6, F.REGION_READ | F.REGION_ROM, 6 << 40, 0x8000, 0,
                 [F.RegionInfo(1), F.RegionData(0, b"\x55\xaa" + bytes(30))]),
        F.Region(7, rw, 7 << 40, 256, 0, [F.PciConfigSpace(), F.RegionInfo(rw), F.RegionData(0, bytes(cfg))]),
        F.Interrupt(0, 0x7, 1),
        F.Interrupt(1, 0x9, 1),
        F.Interrupt(2, 0x9, 4),
        F.Interrupt(4, 0x9, 1),
    ])


@pytest.fixture
def dev(vfio_replay_device):
    return vfio_replay_device(device_record())


def einval(fn, err=errno.EINVAL):
    with pytest.raises(VfioError) as ei:
        fn()
    assert ei.value.errno == err, str(ei.value)
    return ei.value


# ---- info -------------------------------------------------------------------
def test_device_info(dev):
    assert (dev.info.flags, dev.info.num_regions, dev.info.num_irqs) == (3, 9, 5)
    einval(lambda: dev.backend.get_info(8))
    assert len(dev.backend.get_info(16)) == 24


def test_region_info_argsz_and_caps(dev):
    b = dev.backend
    small = uapi.vfio_region_info.from_buffer_copy(b.get_region_info(1, 32))
    caps = sparse_cap([(0, PAGE), (2 * PAGE, PAGE)])
    assert small.argsz == 32 + len(caps)
    assert small.cap_offset == 0
    assert small.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS
    full = b.get_region_info(1, 32 + len(caps))
    hdr = uapi.vfio_region_info.from_buffer_copy(full)
    assert (hdr.cap_offset, hdr.argsz, hdr.size, hdr.offset) == (32, 32 + len(caps), 0x4000, 1 << 40)
    assert full[32:] == caps
    # through Device: the retry loop ends with the decoded areas
    assert dev.region(1).info.mmap_areas() == [(0, PAGE), (2 * PAGE, PAGE)]
    einval(lambda: b.get_region_info(0, 16))
    einval(lambda: dev.region(8))           # no record: the kernel refused VGA
    einval(lambda: dev.region(9))           # past num_regions


def test_irq_info(dev):
    assert dev.irq_info(2).count == 4
    assert dev.irq_info(0).automasked
    einval(lambda: dev.irq_info(3))         # ERR absent in the record
    einval(lambda: dev.irq_info(7))


# ---- regions -------------------------------------------------------------------
def test_bar_reads_captured_then_ram(dev):
    bar0 = dev.region(0)
    assert bar0.read32(0) == 0x010000ED
    assert bar0.read32(0x100) == 0
    bar0.write32(0x100, 0xDEADBEEF)
    assert bar0.read32(0x100) == 0xDEADBEEF


def test_bounds_and_refusals(dev):
    b = dev.backend
    einval(lambda: b.pread(0x100000, 4))                           # at BAR0's end
    einval(lambda: b.pread(0x100000 - 2, 4), errno.EIO)            # short, as KernelBackend reports it
    einval(lambda: b.pread(2 << 40, 4))                            # empty BAR
    einval(lambda: b.pread(12 << 40, 4))                           # no region
    einval(lambda: b.pread((7 << 40) + 256, 4), errno.EFAULT)      # config: EFAULT like vfio_config_do_rw
    einval(lambda: b.pwrite(6 << 40, b"\0"))                       # ROM is read-only
    assert b.pread(6 << 40, 2) == b"\x55\xaa"
    assert b.pread(0, 0) == b""


def test_config_write_policy(dev):
    cfg = dev.config
    cfg.write16(0, 0xFFFF)
    assert cfg.read16(0) == 0x1234                                 # vendor ID ignores writes
    cfg.write16(4, 0xFFFF)
    assert cfg.read16(4) == 0x07FF                                 # COMMAND bits 0-10
    cfg.write16(6, 0xFFFF)
    assert cfg.read16(6) == 0x0010                                 # STATUS unchanged
    cfg.write32(0x10, 0xFFFFFFFF)
    assert cfg.read32(0x10) == 0xFFF00000                          # 1 MiB BAR sizing
    cfg.write32(0x14, 0xFFFFFFFF)
    assert cfg.read32(0x14) == 0xFFFFC00C                          # 16 KiB, 64-bit prefetchable bits kept
    cfg.write32(0x18, 0xFFFFFFFF)
    assert cfg.read32(0x18) == 0xFFFFFFFF                          # upper half of the 64-bit BAR
    cfg.write32(0x1C, 0xFFFFFFFF)
    assert cfg.read32(0x1C) == 0xFFFFFFE1                          # 32-byte I/O BAR
    cfg.write32(0x20, 0xFFFFFFFF)
    assert cfg.read32(0x20) == 0                                   # unimplemented BAR
    cfg.write32(0x30, 0xFFFFFFFF)
    assert cfg.read32(0x30) == 0xFFFF8001                          # 32 KiB ROM + enable
    cfg.write8(0x40, 0x99)
    cfg.write8(0x41, 0x99)
    cfg.write8(0x42, 0x99)
    assert (cfg.read8(0x40), cfg.read8(0x41), cfg.read8(0x42)) == (5, 0x50, 0)      # ID/next kept, MSI Control
    # too: vfio-pci enables MSI through SET_IRQS, not config writes (vfio_msi_config_write)


def test_mmap_backed_by_memfd(dev):
    bar0 = dev.region(0).map()
    assert bar0.read32(0) == 0x010000ED
    bar0.write32(0x40, 0x12345678)
    assert dev.region(0).read32(0x40) == 0x12345678                # pread sees the mapping
    dev.region(0).write32(0x44, 0xCAFEF00D)
    assert bar0.read32(0x44) == 0xCAFEF00D
    bar0.close()


def test_mmap_refusals(dev):
    b = dev.backend
    einval(lambda: b.mmap(7 << 40, PAGE))                          # config is not mmap-able
    einval(lambda: b.mmap(3 << 40, PAGE))                          # I/O BAR
    einval(lambda: b.mmap(1 << 20, PAGE))                          # past BAR0
    einval(lambda: b.mmap((1 << 40) + PAGE, PAGE))                 # the sparse hole of BAR1
    einval(lambda: b.mmap(1 << 40, 2 * PAGE))                      # straddles area and hole
    m = b.mmap((1 << 40) + 2 * PAGE, PAGE)                         # inside the second area
    m.close()
    mapped = dev.region(1).map()
    assert mapped.areas == [(0, PAGE), (2 * PAGE, PAGE)]
    mapped.write32(PAGE + 8, 7)                                    # the hole goes through pwrite
    assert dev.region(1).read32(PAGE + 8) == 7
    mapped.close()


def test_reset_restores_contents(dev):
    bar0 = dev.region(0).map()
    bar0.write32(0, 0)
    dev.config.write16(4, 0x0004)
    dev.reset()
    assert bar0.read32(0) == 0x010000ED                            # the mapping stays valid
    assert dev.config.read16(4) == 0x0103
    assert dev.backend.reset_count == 1
    bar0.close()


def test_reset_without_flag(vfio_replay_device):
    d = vfio_replay_device(device_record(reset=False))
    einval(d.reset)


# ---- interrupts ------------------------------------------------------------------
def test_set_irqs_validation(dev):
    b = dev.backend
    s = lambda *a, **k: (lambda: b.set_irqs(bytes(uapi.build_irq_set(*a, **k))))   # noqa: E731
    einval(s(TRIG, 9, 0, 1, struct.pack("<i", -1)))                                  # index >= num_irqs
    einval(s(TRIG, 3, 0, 1, struct.pack("<i", -1)))                                  # ERR: 0 vectors
    einval(s(TRIG, 2, 3, 2, struct.pack("<ii", -1, -1)))                              # start+count > 4
    einval(s(TRIG, 2, 0, 2, struct.pack("<i", -1)))                                  # argsz short of data
    einval(s(uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_DATA_BOOL | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
             0, 0, 1, b"\1"))
    einval(s(1 << 8 | TRIG, 0, 0, 1, struct.pack("<i", -1)))                          # unknown flag bit
    einval(s(uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_MASK | uapi.VFIO_IRQ_SET_ACTION_UNMASK,
             0, 0, 1), errno.ENOTTY)
    einval(s(uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_MASK, 1, 0, 1), errno.ENOTTY)  # MSI
    einval(s(uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1))  # INTx not enabled
    einval(lambda: dev.disable_irq(0))                                               # nothing enabled
    einval(s(TRIG, 0, 0, 1, struct.pack("<i", 10_000)), errno.EBADF)
    einval(lambda: b.set_irqs(struct.pack("<IIIIIi", 16, TRIG, 0, 0, 1, -1)))               # argsz < minsz
    assert b.irq_log == []


def test_intx_fire_automask_unmask(dev):
    vec = dev.enable_irq(0)
    b = dev.backend
    assert b.fire(0) is True
    assert vec[0].read() == 1
    assert b.irq_state(0).masked == [True]                         # automasked
    assert b.fire(0) is False                                      # pending while masked
    assert vec[0].read() == 0
    dev.unmask_irq(0)
    assert vec[0].read() == 1                                      # the pending one fires at unmask
    st = b.irq_state(0)
    assert st.masked == [True] and st.pending == [False] and st.enabled
    dev.unmask_irq(0)
    dev.mask_irq(0)
    assert b.fire(0) is False
    flags = [c.flags & uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK for c in b.irq_log]
    assert flags == [uapi.VFIO_IRQ_SET_ACTION_TRIGGER, uapi.VFIO_IRQ_SET_ACTION_UNMASK,
                     uapi.VFIO_IRQ_SET_ACTION_UNMASK, uapi.VFIO_IRQ_SET_ACTION_MASK]
    dev.disable_irq(0)
    assert not b.irq_state(0).enabled


def test_unmask_eventfd(dev):
    vec = dev.enable_irq(0)
    b = dev.backend
    resample = dev.unmask_eventfd(0)
    assert b.irq_state(0).unmask_eventfd
    b.fire(0)
    assert vec[0].read() == 1
    resample.signal()
    assert b.irq_state(0).masked == [False]


def test_msix_vectors_and_exclusivity(dev):
    b = dev.backend
    vec = dev.enable_irq(2)
    assert len(vec) == 4
    assert [b.fire(2, v) for v in range(4)] == [True] * 4
    assert [vec[v].read() for v in range(4)] == [1, 1, 1, 1]
    einval(lambda: dev.enable_irq(0))                              # one of INTx/MSI/MSI-X at a time
    dev.trigger_irq(2, start=1, count=2)                           # loopback trigger
    assert [vec[v].read() for v in range(4)] == [0, 1, 1, 0]
    dev.trigger_irq(2, start=0, count=4, values=[1, 0, 0, 1])
    assert [vec[v].read() for v in range(4)] == [1, 0, 0, 1]
    with pytest.raises(ValueError):
        b.fire(2, 4)
    dev.disable_irq(2)
    assert b.fire(2, 0) is False                                   # no eventfd: lost


def test_eventfds_are_duplicated(dev):
    b = dev.backend
    with EventFd() as e:
        b.set_irqs(bytes(uapi.build_irq_set(TRIG, 1, 0, 1, struct.pack("<i", e.fd))))
        assert b.irq_state(1).triggers == [True]
        # the caller closing its fd does not break the backend's copy
        dup = os.dup(e.fd)
    assert b.fire(1) is True
    assert os.eventfd_read(dup) == 1
    os.close(dup)


# ---- lifetime and sources ---------------------------------------------------------
def test_close_releases_everything(tmp_path):
    p = tmp_path / "d.vfiorec"
    F.save(device_record(), p)
    d = open_replay(p)
    assert d.name == "replay:d.vfiorec"
    d.region(0).read32(0)
    b = d.backend
    fds = dict(b._memfds)
    d.close()
    for fd in fds.values():
        with pytest.raises(OSError):
            os.fstat(fd)
    einval(lambda: b.pread(0, 4), errno.EBADF)


def test_no_copy_of_region_data_from_file(tmp_path):
    p = tmp_path / "d.vfiorec"
    F.save(device_record(), p)
    b = ReplayBackend(p)
    try:
        assert all(isinstance(d.data, memoryview) for r in b.record.regions.values() for d in r.data)
        assert not b._memfds                                       # memfds are made on first use
        with Device(b) as dev:
            assert dev.region(0).read32(0) == 0x010000ED
            assert list(b._memfds) == [0]
    finally:
        b.close()


def test_record_without_device_info():
    rec = F.DeviceRecord([F.PciInfo(0, 0, 1, 0), F.Region(0, 7, 0, PAGE, 0), F.Interrupt(1, 9, 1)])
    with open_replay(rec) as d:
        assert (d.info.flags, d.info.num_regions, d.info.num_irqs) == (uapi.VFIO_DEVICE_FLAGS_PCI, 1, 2)


def test_device_info_caps_argsz():
    cap = struct.pack("<HHI", uapi.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP, 1, 0) + struct.pack("<II", 3, 0)
    rec = F.DeviceRecord([F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_CAPS, 0, 0, cap)])
    b = ReplayBackend(rec)
    small = uapi.vfio_device_info.from_buffer_copy(b.get_info(24))
    assert (small.argsz, small.cap_offset) == (24 + len(cap), 0)
    full = b.get_info(24 + len(cap))
    assert uapi.vfio_device_info.from_buffer_copy(full).cap_offset == 24
    assert full[24:] == cap
    with Device(b) as d:
        assert [(c.id, c.data) for c in d.info.caps] == [(uapi.VFIO_DEVICE_INFO_CAP_PCI_ATOMIC_COMP, cap)]
    assert ctypes.sizeof(uapi.vfio_device_info) == 24
