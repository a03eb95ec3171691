"""The arm64 guest itself (``tools/vfio-harness --arch arm64``): is it the machine it claims?

The arm64 leg exists for what x86 guests cannot show: VFIO behind an Arm SMMUv3 and the
device-tree side of VFIO (vfio-platform, platform devices described by OF nodes).  These
checks make a mis-set-up arm64 guest fail by name before any other test trusts it.
Marked ``arm64``: the x86 legs deselect them (they describe another machine).

Facts relied on (Linux 6.12, QEMU virt with ``iommu=smmuv3``):
- arm-smmu-v3 registers its IOMMU in sysfs as ``smmu3.<physical address>`` and a
  translated device's ``iommu`` link points at it;
- QEMU's virt machine describes 32 virtio-mmio transports in its device tree
  (``compatible = "virtio,mmio"``); those without a backend have device ID 0 and stay
  without a driver, the harness's 9p shares are bound to ``virtio-mmio``;
- vfio-platform's ``reset_required`` module parameter is 0444 and reads ``Y``/``N``;
- arm-smmu-v3 reserves a software-managed MSI window (IOMMU_RESV_SW_MSI, MSI_IOVA_BASE
  0x8000000, MSI_IOVA_LENGTH 0x100000) in every domain, where the GIC ITS doorbell
  gets mapped; type1 reports it as a hole in VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE and
  refuses a DMA map there (EINVAL).  x86's hole is the 0xfee00000 interrupt window
  instead, which is ordinary IOVA space here.
"""

from __future__ import annotations

import errno
import glob
import os
import platform

import pytest

import vfio
from vfio.errors import VfioError

# Deselected, not skipped, on x86 guests: tools/run-kernel-tests's x86 legs say
# ``not arm64`` and the arm64 leg selects it.
pytestmark = [pytest.mark.kernel, pytest.mark.arm64]


SW_MSI_BASE, SW_MSI_SIZE = 0x8000000, 0x100000


def _compatible(dev: str) -> list[str]:
    with open(os.path.join(dev, "of_node", "compatible"), "rb") as f:
        return [c.decode() for c in f.read().split(b"\0") if c]


def test_machine_is_aarch64():
    assert platform.machine() == "aarch64"


def test_edu_is_translated_by_the_smmuv3(edu_bdf):
    iommu = os.path.realpath(f"/sys/bus/pci/devices/{edu_bdf}/iommu")
    assert os.path.basename(iommu).startswith("smmu3."), iommu
    group = os.path.basename(os.path.realpath(f"/sys/bus/pci/devices/{edu_bdf}/iommu_group"))
    assert os.path.exists(f"/dev/vfio/{group}")


def test_iommufd_and_cdev_exist(edu_bdf):
    assert os.path.exists("/dev/iommu")
    cdevs = os.listdir(f"/sys/bus/pci/devices/{edu_bdf}/vfio-dev")
    assert len(cdevs) == 1 and os.path.exists(f"/dev/vfio/devices/{cdevs[0]}")


def test_virtio_mmio_transports_come_from_the_device_tree():
    devs = sorted(glob.glob("/sys/bus/platform/devices/*.virtio_mmio"))
    assert devs, "no virtio_mmio platform devices"
    assert all("virtio,mmio" in _compatible(d) for d in devs)
    drivers = {os.path.basename(os.path.realpath(f"{d}/driver")) if os.path.exists(f"{d}/driver") else None
               for d in devs}
    # the harness's own 9p shares use some transports, and spare ones stay unbound
    # (candidates for vfio-platform)
    assert "virtio-mmio" in drivers
    assert None in drivers


def test_vfio_platform_is_built_in_without_mandatory_reset():
    assert os.path.isdir("/sys/bus/platform/drivers/vfio-platform")
    with open("/sys/module/vfio_platform/parameters/reset_required") as f:
        assert f.read().strip() == "N"


def test_smmu_msi_window_is_the_reserved_hole(edu_bdf):
    with vfio.open_pci_device(edu_bdf, interface="container") as dev:
        space = dev.dma
        ranges = space.iova_ranges()
        end = SW_MSI_BASE + SW_MSI_SIZE - 1
        assert not any(s <= end and e >= SW_MSI_BASE for s, e in ranges), ranges
        # usable right below and right above it: the hole is exactly the window
        assert any(s <= SW_MSI_BASE - 1 <= e for s, e in ranges), ranges
        assert any(s <= end + 1 <= e for s, e in ranges), ranges
        buf = vfio.DmaBuffer(0x1000)
        try:
            with pytest.raises(ValueError):
                space.map(buf, iova=SW_MSI_BASE)
            with pytest.raises(VfioError) as ei:
                space.map_dma(buf.vaddr, SW_MSI_BASE, 0x1000)
            assert ei.value.errno == errno.EINVAL
            # and x86's interrupt window is plain IOVA space on this machine
            m = space.map(buf, iova=0xFEE00000)
            space.unmap(m)
        finally:
            buf.close()
