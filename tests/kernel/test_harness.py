"""The harness itself: does the guest look like the leg it claims to be?

Every other kernel test trusts that tools/vfio-harness booted the kernel and
IOMMU it was asked for and bound the test devices to vfio-pci.  These checks
make a mis-set-up guest fail here, by name, instead of showing up as puzzling
ioctl errors elsewhere.  sysfs (vfio.host.sysfs) and os only; ioctls live in vfio/uapi.py.

Facts relied on (6.12):
- an IOMMU-backed group appears as /dev/vfio/N; a no-IOMMU one as
  /dev/vfio/noiommu-N, with the sysfs group name ``vfio-noiommu``;
- every vfio-pci device gets ``<sysfs dev>/vfio-dev/vfioK`` (also on Debian's
  kernel: the class device exists without the cdev); only with
  CONFIG_VFIO_DEVICE_CDEV is there a /dev/vfio/devices/vfioK node for it, and
  only with CONFIG_IOMMUFD a /dev/iommu; Debian's kernel has neither node;
- vfio_iommu_type1 exposes module parameters, so /sys/module/vfio_iommu_type1
  exists exactly when it is built in or loaded.
"""

from __future__ import annotations

import os

import pytest

from vfio.host.sysfs import Host

pytestmark = pytest.mark.kernel

SYSFS_PCI = "/sys/bus/pci/devices"


def _group_of(bdf: str) -> str:
    group = Host("/").device(bdf).iommu_group
    assert group is not None, f"{bdf} has no IOMMU group"
    return group


def _cdevs_of(bdf: str) -> list[str]:
    path = f"{SYSFS_PCI}/{bdf}/vfio-dev"
    return sorted(os.listdir(path)) if os.path.isdir(path) else []


def _iommu_units() -> list[str]:
    return sorted(os.listdir("/sys/class/iommu")) if os.path.isdir("/sys/class/iommu") else []


# The nvme case needs nvme on vfio-pci: marked so the virtio-iommu leg, whose nvme
# stays on its own driver, deselects just that case.
@pytest.fixture(params=["edu", pytest.param("nvme", marks=pytest.mark.vfio_nvme)])
def bound_bdf(request):
    return request.getfixturevalue(f"{request.param}_bdf")


def test_test_devices_bound_to_vfio_pci(bound_bdf):
    dev = Host("/").device(bound_bdf)
    assert (dev.driver, dev.driver_override) == ("vfio-pci", "vfio-pci")


def test_iommu_present(harness_iommu):
    # Runs on the IOMMU legs; the no-IOMMU leg checks the opposite in test_noiommu_groups.
    units = _iommu_units()
    with open("/proc/cmdline") as f:
        cmdline = f.read().split()
    if harness_iommu == "intel":
        assert any(u.startswith("dmar") for u in units), f"no VT-d unit in /sys/class/iommu: {units}"
        assert "intel_iommu=on" in cmdline
    elif harness_iommu == "smmuv3":
        # arm-smmu-v3 registers its unit as smmu3.<MMIO address>; the GICv3 ITS isolates
        # MSIs, so type1 takes the group without allow_unsafe_interrupts
        assert any(u.startswith("smmu3.") for u in units), f"no SMMUv3 unit in /sys/class/iommu: {units}"
        assert not any(u.startswith("dmar") for u in units), units
        assert not any(a.startswith("vfio_iommu_type1.allow_unsafe_interrupts") for a in cmdline), cmdline
    else:
        # virtio-iommu registers its unit under the name of its own PCI device
        assert harness_iommu == "virtio", f"unexpected VFIO_HARNESS_IOMMU={harness_iommu!r}"
        assert units and not any(u.startswith("dmar") for u in units), units
        assert "vfio_iommu_type1.allow_unsafe_interrupts=1" in cmdline


def test_group_node_exists_for_each_bound_device(bound_bdf, harness_iommu):
    group = _group_of(bound_bdf)
    node = f"/dev/vfio/noiommu-{group}" if harness_iommu == "none" else f"/dev/vfio/{group}"
    assert os.path.exists(node), f"{bound_bdf} is in group {group} but {node} is missing: {os.listdir('/dev/vfio')}"
    assert os.path.exists("/dev/vfio/vfio"), "the container node /dev/vfio/vfio is missing"


def test_iommufd_and_cdev_only_on_built_kernels(harness_kernel, edu_bdf, nvme_bdf):
    have_iommufd = os.path.exists("/dev/iommu")
    if harness_kernel == "stock":
        assert not have_iommufd, "Debian's kernel unexpectedly has /dev/iommu: the stock leg's premise is wrong"
        assert not os.path.isdir("/dev/vfio/devices"), os.listdir("/dev/vfio/devices")
    else:
        assert have_iommufd, f"{harness_kernel} kernel has no /dev/iommu (CONFIG_IOMMUFD missing?)"
        for bdf in (edu_bdf, nvme_bdf):
            cdevs = _cdevs_of(bdf)
            assert len(cdevs) == 1 and cdevs[0].startswith("vfio"), f"{bdf}: vfio-dev entries {cdevs}"
            assert os.path.exists(f"/dev/vfio/devices/{cdevs[0]}")


def test_container_backend_matches_leg(harness_kernel):
    type1 = os.path.isdir("/sys/module/vfio_iommu_type1")
    if harness_kernel == "container":
        assert type1, "container kernel should serve /dev/vfio/vfio with vfio_iommu_type1"
    elif harness_kernel == "iommufd-container":
        assert not type1, "iommufd-container kernel must not have vfio_iommu_type1 (IOMMUFD_VFIO_CONTAINER)"
    else:
        assert harness_kernel == "stock", f"unknown leg {harness_kernel!r}"


def test_nvme_serial_reaches_the_guest(nvme_serial):
    # The serial is handed to QEMU and exported by the harness; tests compare
    # it with NVMe Identify data, so it must be a valid NVMe serial (<= 20 bytes).
    assert 0 < len(nvme_serial.encode()) <= 20


@pytest.mark.noiommu
def test_noiommu_groups(edu_bdf, nvme_bdf, harness_iommu):
    assert harness_iommu == "none"
    assert _iommu_units() == [], f"IOMMU units present in a no-IOMMU guest: {_iommu_units()}"
    with open("/sys/module/vfio/parameters/enable_unsafe_noiommu_mode") as f:
        assert f.read().strip() == "Y"
    for bdf in (edu_bdf, nvme_bdf):
        group = _group_of(bdf)
        with open(f"/sys/kernel/iommu_groups/{group}/name") as f:
            assert f.read().strip() == "vfio-noiommu"
        assert os.path.exists(f"/dev/vfio/noiommu-{group}")
        assert not os.path.exists(f"/dev/vfio/{group}")
