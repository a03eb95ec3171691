"""Device DMA logging (VFIO_DEVICE_FEATURE_DMA_LOGGING_*) where a driver offers it:
the sample mtty registers logging callbacks (start, stop, read-and-clear) that
log nothing, since it does no DMA.  The whole vfio.dirty device path runs
against the kernel's own checks and reports a clean bitmap.
"""

from __future__ import annotations

import errno

import pytest

from vfio.dirty import DeviceDirtyTracker, DirtyMechanism, open_dirty_tracker
from vfio.errors import VfioError

from tests.kernel.test_migration_mtty import PATHS, mdevs, no_fd_leak, open_mdev  # noqa: F401

pytestmark = [pytest.mark.kernel, pytest.mark.mdev]
PAGE = 4096


@pytest.mark.parametrize("interface", PATHS)
def test_mtty_dma_logging(interface, no_fd_leak):  # noqa: F811
    with mdevs("mtty-1") as (uid,):
        with open_mdev(uid, interface) as dev:
            m = dev.dma.alloc(4 * PAGE)
            tracker = open_dirty_tracker(dev)          # offered: the device's own logging first
            assert isinstance(tracker, DeviceDirtyTracker) and tracker.mechanism is DirtyMechanism.DEVICE
            assert tracker.ranges == [(m.iova, m.size)]
            with tracker:
                tracker.start()
                assert tracker.tracking and tracker.page_size == PAGE
                bm = tracker.bitmap(m.iova, m.size)
                assert bm.pages == 4 and bm.dirty() == []
            assert not tracker.tracking
            # the kernel's own check of a report: a page size under 4 KiB is EINVAL
            with DeviceDirtyTracker(dev, [(m.iova, m.size)], page_size=2048) as small:
                small.start()
                with pytest.raises(VfioError) as ei:
                    small.bitmap(m.iova, PAGE)
                assert ei.value.errno == errno.EINVAL
            # overlapping ranges: the kernel refuses the start with EINVAL
            bad = DeviceDirtyTracker(dev, [(m.iova, 2 * PAGE), (m.iova + PAGE, PAGE)])
            with pytest.raises(VfioError) as ei:
                bad.start()
            assert ei.value.errno == errno.EINVAL and not bad.tracking


def test_type1_tracks_exactly_while_no_group_dmas_through_the_iommu(edu_bdf, harness_kernel, no_fd_leak):  # noqa: F811
    """type1 knows the pages an mdev pins or writes through the kernel; mtty does neither,
    so with only mtty in the container nothing is dirty.  Once a vfio-pci device's group
    joins, its IOMMU domain maps everything and type1 must report every page."""
    import vfio
    from vfio.dirty import DirtyTrackingUnsupported, Type1DirtyTracker
    with mdevs("mtty-1") as (uid,):
        with open_mdev(uid, "container") as dev:
            c = dev.container
            m = c.alloc(4 * PAGE)
            if harness_kernel == "iommufd-container":
                with pytest.raises(DirtyTrackingUnsupported) as ei:
                    Type1DirtyTracker(c)
                assert ei.value.errno == errno.ENOTTY
                return
            with Type1DirtyTracker(c) as t:
                t.start()
                assert t.bitmap(m.iova, m.size).dirty() == []
                with vfio.open_pci_device(edu_bdf, container=c) as edu:
                    assert edu.container is c and len(c.groups) == 2
                    assert t.bitmap(m.iova, m.size).dirty() == [m.iova + i * PAGE for i in range(4)]
