"""The iommufd + VFIO cdev path against the real kernel (built kernels only).

Same Device API as the group path; DMA through an IOAS with the same
DmaSpace interface as the type1 container.  Facts pinned here (Linux 6.12):
the IOAS's usable ranges exclude the MSI window the kernel reserves for the
group (sysfs reserved_regions) once a device is attached;
IOMMU_IOAS_UNMAP of nothing is ENOENT (type1 answers 0 bytes); a mapping in a
reserved range is EINVAL; the emulated Intel IOMMU reports VT-d hardware info,
arm-smmu-v3 none (type NONE: no hw_info op before 6.14).
"""

from __future__ import annotations

import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.errors import VfioError
from vfio.iommufd import IOAS, IommuFD, cdev_path_of, open_cdev_device

from tests.kernel import kernel_edu as edu_dev
from tests.kernel import kernel_iommu

pytestmark = [pytest.mark.kernel, pytest.mark.cdev]


@pytest.fixture
def edu_cdev(edu_bdf):
    with open_cdev_device(edu_bdf) as dev:
        yield dev


def test_host_offers_cdev(edu_bdf):
    ifs = vfio.available_interfaces()
    assert ifs["cdev"] and ifs["container"]
    path = cdev_path_of(edu_bdf)
    assert path.startswith("/dev/vfio/devices/vfio") and os.path.exists(path)


def test_cdev_device_info_regions_irqs(edu_cdev):
    dev = edu_cdev
    assert dev.info.is_pci and dev.info.num_irqs == 5
    assert dev.backend.devid > 0 and dev.backend.attached is not None
    assert dev.region(0).info.size == 1 << 20
    with dev.region(0).map() as bar:
        assert bar.read32(0) == edu_dev.ID
    assert dev.config.read16(0) == 0x1234


def test_ioas_ranges_exclude_msi_window(edu_cdev, edu_bdf):
    ranges = edu_cdev.ioas.iova_ranges()
    assert len(ranges) >= 2
    # the hole is the MSI window the kernel reserves for the group (x86's 0xfee00000,
    # SMMUv3's software MSI window), exactly
    kernel_iommu.assert_msi_holes(edu_bdf, ranges)
    assert edu_cdev.ioas.min_page_size >= 4096


def test_ioas_dma_round_trip_fixed_and_kernel_chosen(edu_cdev):
    dev = edu_cdev
    edu_dev.bus_master(dev)
    ioas = dev.ioas
    with dev.region(0).map() as bar:
        m = ioas.alloc(0x2000, limit=edu_dev.DMA_MASK)       # allocator-chosen, fixed-IOVA map
        assert edu_dev.round_trip(bar, m)
        assert m.unmap() == 0x2000
        # kernel-chosen IOVA: the raw call reports where it put the mapping
        buf = vfio.DmaBuffer(0x1000)
        try:
            iova = ioas.map_raw(buf.vaddr, 0x1000)
            assert iova % 0x1000 == 0 and not (0xFEE00000 <= iova < 0xFEF00000)
            assert ioas.unmap_raw(iova, 0x1000) == 0x1000
        finally:
            buf.close()


def test_ioas_errors(edu_cdev, edu_bdf):
    ioas = edu_cdev.ioas
    buf = vfio.DmaBuffer(0x1000)
    try:
        for start, end in kernel_iommu.msi_windows(edu_bdf):
            for iova in (start, end + 1 - 0x1000):
                with pytest.raises(VfioError) as ei:
                    ioas.map_raw(buf.vaddr, 0x1000, iova=iova)
                assert ei.value.errno == errno.EINVAL and "IOMMU_IOAS_MAP" in str(ei.value)
        with pytest.raises(VfioError) as ei:
            ioas.unmap_raw(0x7000000, 0x1000)
        assert ei.value.errno == errno.ENOENT
    finally:
        buf.close()


def test_cdev_msi(edu_cdev):
    dev = edu_cdev
    edu_dev.bus_master(dev)
    with dev.region(0).map() as bar:
        vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
        bar.write32(0x60, 0x10)
        assert vec[0].wait(10) >= 1
        bar.write32(0x64, bar.read32(0x24))
        dev.disable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)


def test_cdev_nvme_reset(nvme_bdf):
    with open_cdev_device(nvme_bdf) as dev:
        assert dev.info.can_reset
        with dev.region(0).map() as bar:
            dev.reset()
            assert bar.read32(0x14) & 1 == 0


def test_hw_info_and_hwpt(edu_bdf, harness_iommu):
    with IommuFD() as fd:
        ioas = fd.alloc_ioas()
        with open_cdev_device(edu_bdf, iommufd=fd, ioas=ioas) as dev:
            hw = fd.get_hw_info(dev.backend.devid)
            if harness_iommu == "intel":
                assert hw.data_type == uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD
                assert hw.vtd is not None and hw.vtd["cap_reg"] != 0
            elif harness_iommu == "smmuv3":
                # arm-smmu-v3 has no hw_info op in 6.12 (IOMMU_HW_INFO_TYPE_ARM_SMMUV3 came
                # with 6.14's nesting support): iommufd answers type NONE with no data
                assert hw.data_type == uapi.IOMMU_HW_INFO_TYPE_NONE
                assert hw.data == b"" and hw.vtd is None
            else:
                pytest.fail(f"no IOMMU_GET_HW_INFO expectation for VFIO_HARNESS_IOMMU={harness_iommu!r}")
            # a hardware page table of our own on the same IOAS, then attach to it
            hwpt = fd.alloc_hwpt(dev.backend.devid, ioas.id)
            dev.backend.detach()
            assert dev.backend.attach(hwpt) == hwpt
            dev.backend.detach()
            fd.destroy(hwpt)
            dev.backend.attach(ioas.id)


def test_two_devices_share_one_ioas(edu_bdf, nvme_bdf):
    with IommuFD() as fd:
        ioas = fd.alloc_ioas()
        with open_cdev_device(edu_bdf, iommufd=fd, ioas=ioas) as a, \
                open_cdev_device(nvme_bdf, iommufd=fd, ioas=ioas) as b:
            assert a.ioas is b.ioas
            assert a.backend.devid != b.backend.devid
            m = ioas.alloc(0x2000, limit=edu_dev.DMA_MASK)
            edu_dev.bus_master(a)
            with a.region(0).map() as bar:
                assert edu_dev.round_trip(bar, m)
            m.unmap()


def _open_fds():
    return sorted(os.listdir("/proc/self/fd"))


def test_group_and_cdev_are_exclusive_and_a_failed_open_leaks_nothing(edu_bdf):
    before = _open_fds()
    # a device opened through its group cannot also be bound through its cdev
    with vfio.open_pci_device(edu_bdf, interface="container"):
        during = _open_fds()
        with pytest.raises(VfioError) as ei:
            open_cdev_device(edu_bdf)        # opens /dev/iommu, an IOAS and the cdev, then BIND fails
        assert ei.value.errno in (errno.EBUSY, errno.EINVAL) and "BIND_IOMMUFD" in str(ei.value)
        assert _open_fds() == during
        with pytest.raises(VfioError) as ei:
            vfio.open_pci_device(edu_bdf, interface="container")     # the group is open already
        assert ei.value.errno == errno.EBUSY and "open VFIO group" in str(ei.value)
        assert _open_fds() == during
    assert _open_fds() == before


def test_vfio_inspect_reports_interfaces_and_the_one_it_used(edu_bdf):
    import json
    import subprocess
    import sys

    def inspect(*args):
        r = subprocess.run([sys.executable, "-m", "vfio.host.inspect", "--json", *args],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    host = inspect()
    assert host["interfaces"]["cdev"] is True and host["interfaces"]["container"] is True
    dev = inspect(edu_bdf)
    assert dev["vfio"]["interface"] == "container"      # auto: the container while there is one
    assert dev["vfio"]["regions"][0]["size"] == 1 << 20
