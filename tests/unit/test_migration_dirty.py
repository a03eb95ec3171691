"""vfio.dirty on the host: the bitmap's reading, range checks, and that a mechanism a
device does not offer is the documented error (the kernel's own answers are proven in
tests/kernel/test_dirty_edu.py and test_dirty_mtty.py)."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

import vfio
from vfio import uapi
from vfio.dirty import (DeviceDirtyTracker, DirtyBitmap, DirtyMechanism, DirtyTrackingUnsupported,
                        HwptDirtyTracker, Type1DirtyTracker, open_dirty_tracker)
from vfio.errors import InvalidValue, VfioError

PAGE = 4096


def test_bitmap_bits_are_little_endian_pages():
    # pages 0, 9 and 63 of 64: byte 0 bit 0, byte 1 bit 1, byte 7 bit 7
    bits = bytearray(8)
    for n in (0, 9, 63):
        bits[n // 8] |= 1 << (n % 8)
    bm = DirtyBitmap(0x100000, 64 * PAGE, PAGE, bytes(bits))
    assert bm.pages == 64
    assert bm.dirty() == [0x100000, 0x100000 + 9 * PAGE, 0x100000 + 63 * PAGE]
    assert bm.is_dirty(0x100000 + 9 * PAGE + 5) and not bm.is_dirty(0x100000 + PAGE)
    with pytest.raises(InvalidValue, match="outside"):
        bm.is_dirty(0x100000 + 64 * PAGE)
    # bits past the range (padding of the last u64) are not pages
    assert DirtyBitmap(0, 3 * PAGE, PAGE, b"\xff" + bytes(7)).dirty() == [0, PAGE, 2 * PAGE]


class _Dev:
    """A device whose driver answers every feature with ``err`` (vfio-pci: ENOTTY)."""
    name = "dev0"
    container = None
    ioas = None
    dma = None
    closed = False

    def __init__(self, err=errno.ENOTTY):
        self.err = err
        self.backend = SimpleNamespace()

    def feature(self, feature, flags, data=b""):
        raise VfioError(self.err, f"VFIO_DEVICE_FEATURE {feature} on {self.name}")


def test_device_logging_not_offered_is_the_documented_error():
    with pytest.raises(DirtyTrackingUnsupported) as ei:
        DeviceDirtyTracker(_Dev(), [(0, PAGE)])
    e = ei.value
    assert e.errno == errno.ENOTTY and e.mechanism is DirtyMechanism.DEVICE
    assert isinstance(e, OSError) and isinstance(e, vfio.Error) and isinstance(e, VfioError)
    # another errno is the kernel's refusal, not "unsupported"
    with pytest.raises(VfioError) as ei:
        DeviceDirtyTracker(_Dev(errno.EFAULT), [(0, PAGE)])
    assert not isinstance(ei.value, DirtyTrackingUnsupported) and ei.value.errno == errno.EFAULT


def test_ranges_are_checked_before_any_call():
    class Offered(_Dev):
        def feature(self, feature, flags, data=b""):
            return b""
    with pytest.raises(InvalidValue, match="multiples"):
        DeviceDirtyTracker(Offered(), [(0x1001, PAGE)])
    with pytest.raises(InvalidValue, match="no IOVA ranges"):
        DeviceDirtyTracker(Offered(), [])


def test_iommu_mechanisms_need_their_context():
    with pytest.raises(DirtyTrackingUnsupported, match="not opened through a VFIO cdev"):
        HwptDirtyTracker(_Dev())
    c = SimpleNamespace(path="/dev/vfio/vfio", noiommu=False,
                        iommu_info=lambda: SimpleNamespace(migration=None))
    with pytest.raises(DirtyTrackingUnsupported, match="no migration capability") as ei:
        Type1DirtyTracker(c)
    assert ei.value.errno == errno.ENOTTY and ei.value.mechanism is DirtyMechanism.TYPE1
    nc = SimpleNamespace(path="/dev/vfio/vfio", noiommu=True)
    with pytest.raises(DirtyTrackingUnsupported, match="no-IOMMU"):
        Type1DirtyTracker(nc)


def test_open_names_every_mechanism_it_tried():
    with pytest.raises(DirtyTrackingUnsupported) as ei:
        open_dirty_tracker(_Dev())
    text = str(ei.value)
    assert "device-dma-logging:" in text and "iommufd-hwpt:" in text and ei.value.errno == errno.ENOTTY


def test_type1_bitmap_size_limit_and_alignment():
    info = SimpleNamespace(migration={"pgsize_bitmap": 0x1000 | 0x200000, "max_dirty_bitmap_size": 8})
    c = SimpleNamespace(path="/dev/vfio/vfio", noiommu=False, iommu_info=lambda: info)
    t = Type1DirtyTracker(c)
    assert t.page_size == PAGE and not t.tracking
    with pytest.raises(InvalidValue, match="over the kernel's 8"):
        t.bitmap(0, 65 * PAGE)                   # 65 pages need two u64 words
    with pytest.raises(InvalidValue, match="multiples"):
        t.bitmap(PAGE, PAGE + 1)
    assert uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP == 4
