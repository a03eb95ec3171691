"""Dirty page tracking (vfio.dirty) on the real kernel, with QEMU's edu writing by DMA.

What the kernels here answer (Linux 6.12, QEMU's emulated VT-d):

* type1 (``VFIO_IOMMU_DIRTY_PAGES``, container and stock kernels): offered, but
  type1 has no dirty bits of its own: a group whose device DMAs through the
  IOMMU (edu on vfio-pci) makes it report *every* page of every mapping dirty
  (vfio_iommu_type1.c: "mark all pages dirty if any IOMMU capable device is not
  able to report dirty pages").  So the written pages are reported, the pages
  of the range that no mapping covers are not, and the rest of a mapping is
  reported too -- the kernel cannot tell.  iommufd's container emulation does
  not implement the ioctl: ENOTTY.
* iommufd HWPT dirty tracking: QEMU's intel-iommu has no second-stage A/D bits
  (no SSADS in ECAP; its SMMUv3 no HTTU), IOMMU_GET_HW_INFO lists no
  IOMMU_HW_CAP_DIRTY_TRACKING and IOMMU_HWPT_ALLOC with
  IOMMU_HWPT_ALLOC_DIRTY_TRACKING answers EOPNOTSUPP.
* device DMA logging: plain vfio-pci has none (ENOTTY); mtty registers logging
  callbacks that log nothing (it does no DMA), so there the whole API runs and
  reports a clean bitmap (tests/kernel/test_dirty_mtty.py).
"""

from __future__ import annotations

import errno

import pytest

import vfio
from vfio import uapi
from vfio.dirty import (DirtyMechanism, DirtyTrackingUnsupported, DeviceDirtyTracker, HwptDirtyTracker,
                        Type1DirtyTracker, open_dirty_tracker)
from vfio.errors import InvalidValue, VfioError

from tests.kernel import kernel_edu as edu_dev

PAGE = 4096


@pytest.mark.kernel
def test_type1_dirty_pages_after_edu_dma(edu_bdf, harness_kernel):
    with vfio.open_pci_device(edu_bdf, interface="container") as dev:
        edu_dev.bus_master(dev)
        c = dev.container
        if harness_kernel == "iommufd-container":
            with pytest.raises(DirtyTrackingUnsupported) as ei:
                Type1DirtyTracker(c)
            assert ei.value.errno == errno.ENOTTY and ei.value.mechanism is DirtyMechanism.TYPE1
            assert "no migration capability" in str(ei.value)
            # the kernel's own answer to the ioctl
            hdr = uapi.vfio_iommu_type1_dirty_bitmap(8, uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START)
            with pytest.raises(VfioError) as ei2:
                uapi.ioctl(c.fd, uapi.VFIO_IOMMU_DIRTY_PAGES, bytearray(bytes(hdr)), "DIRTY_PAGES START")
            assert ei2.value.errno == errno.ENOTTY
            with pytest.raises(DirtyTrackingUnsupported):
                open_dirty_tracker(dev)
            return
        src = c.alloc(PAGE, limit=edu_dev.DMA_MASK)               # what edu reads
        a = c.alloc(8 * PAGE, limit=edu_dev.DMA_MASK)             # what edu writes into
        b = c.map(vfio.DmaBuffer(4 * PAGE), iova=a.iova + 16 * PAGE)
        try:
            tracker = open_dirty_tracker(dev)                     # edu has no DMA logging: type1
            assert isinstance(tracker, Type1DirtyTracker) and tracker.mechanism is DirtyMechanism.TYPE1
            assert tracker.page_size == PAGE and tracker.max_bitmap_bytes > 0
            with tracker:
                tracker.start()
                assert tracker.tracking
                span = (a.iova, 20 * PAGE)                        # a, an 8-page hole, b
                tracker.bitmap(*span)                             # read and clear what mapping did
                with dev.region(0).map() as bar:
                    for page, mark in ((2, b"two"), (5, b"five")):
                        src.buffer.write(0, mark + bytes(64))
                        edu_dev.dma(bar, src.iova, edu_dev.DMA_BUF, 64)
                        edu_dev.dma(bar, edu_dev.DMA_BUF, a.iova + page * PAGE, 64, to_ram=True)
                assert a.buffer.read(2 * PAGE, 3) == b"two" and a.buffer.read(5 * PAGE, 4) == b"five"
                bm = tracker.bitmap(*span)
                assert bm.pages == 20 and len(bm.bits) == 8
                dirty = set(bm.dirty())
                written = {a.iova + 2 * PAGE, a.iova + 5 * PAGE}
                assert written <= dirty                           # never misses a write
                hole = {a.iova + p * PAGE for p in range(8, 16)}
                assert not dirty & hole                           # no mapping, never dirty
                # edu is IOMMU-backed: type1 cannot tell written from unwritten pages of a mapping
                assert dirty == {a.iova + p * PAGE for p in range(8)} | {b.iova + p * PAGE for p in range(4)}
                assert bm.is_dirty(a.iova + 2 * PAGE) and not bm.is_dirty(a.iova + 9 * PAGE)
                # a range that cuts a mapping: the kernel says EINVAL
                with pytest.raises(VfioError) as ei:
                    tracker.bitmap(a.iova + PAGE, 2 * PAGE)
                assert ei.value.errno == errno.EINVAL
                with pytest.raises(InvalidValue, match="multiples"):
                    tracker.bitmap(a.iova + 1, PAGE)
                tracker.stop()
                assert not tracker.tracking
                with pytest.raises(VfioError) as ei:              # no bitmap once stopped
                    tracker.bitmap(*span)
                assert ei.value.errno == errno.EINVAL
        finally:
            b.unmap()
            b.buffer.close()


@pytest.mark.kernel
@pytest.mark.cdev
def test_iommufd_hwpt_dirty_tracking_unsupported_on_emulated_iommus(edu_bdf, harness_iommu):
    # QEMU emulates neither VT-d's second-stage A/D bits nor SMMUv3's HTTU
    with vfio.open_pci_device(edu_bdf, interface="cdev") as dev:
        hw = dev.iommufd.get_hw_info(dev.backend.devid)
        if harness_iommu == "intel":
            assert hw.data_type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD
        assert not hw.capabilities & uapi.IOMMU_HW_CAP_DIRTY_TRACKING
        with pytest.raises(DirtyTrackingUnsupported) as ei:
            HwptDirtyTracker(dev)
        e = ei.value
        assert e.errno == errno.EOPNOTSUPP and e.mechanism is DirtyMechanism.IOMMUFD_HWPT
        assert "IOMMU_HWPT_ALLOC" in str(e) and "capabilities 0x0" in str(e)
        with pytest.raises(DirtyTrackingUnsupported) as ei:
            open_dirty_tracker(dev)
        assert ei.value.errno == errno.EOPNOTSUPP and "device-dma-logging" in str(ei.value)
        # the device is still attached to its IOAS and does DMA
        edu_dev.bus_master(dev)
        m = dev.dma.alloc(0x2000, limit=edu_dev.DMA_MASK)
        with dev.region(0).map() as bar:
            assert edu_dev.round_trip(bar, m)


@pytest.mark.kernel
@pytest.mark.parametrize("interface", ["container", pytest.param("cdev", marks=pytest.mark.cdev)])
def test_device_dma_logging_unsupported_on_vfio_pci(edu_bdf, interface):
    with vfio.open_pci_device(edu_bdf, interface=interface) as dev:
        m = dev.dma.alloc(4 * PAGE, limit=edu_dev.DMA_MASK)
        with pytest.raises(DirtyTrackingUnsupported) as ei:
            DeviceDirtyTracker(dev, [(m.iova, m.size)])
        assert ei.value.errno == errno.ENOTTY and ei.value.mechanism is DirtyMechanism.DEVICE
        assert "DMA_LOGGING_START" in str(ei.value)
