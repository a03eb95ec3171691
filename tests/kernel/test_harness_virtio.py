"""The virtio-iommu guest (``tools/vfio-harness --iommu virtio``) is what it claims.

virtio-iommu (the virtio 1.2 "IOMMU device", QEMU's virtio-iommu-pci) is a
paravirtual IOMMU: the guest finds it through the ACPI VIOT table, which says
which PCI endpoints sit behind it, and programs it with virtio requests instead
of page tables.  For VFIO it differs from VT-d in two ways that matter here:

- it is itself a PCI device driven by virtio-pci, so it registers late (a
  module on Debian's kernel): until it has, VIOT defers the probe of every
  endpoint it translates, and a device gets its IOMMU group when it is probed;
- it does not remap interrupts, so vfio_iommu_type1 attaches a group only with
  ``allow_unsafe_interrupts=1`` (the harness puts it on the kernel command line).

Facts relied on (Linux 6.12): the IOMMU unit in /sys/class/iommu is named after
the virtio-iommu's PCI device; virtio-iommu's modern PCI ID is 1af4:1057
(0x1040 + virtio device ID 23).  The leg: edu on vfio-pci, nvme and e1000e on
their own drivers.
"""

from __future__ import annotations

import os

import pytest

from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.virtio_iommu]

VIRTIO_IOMMU_ID = "1af4:1057"
SYSFS_PCI = "/sys/bus/pci/devices"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _pci_id(bdf: str) -> str:
    return f"{_read(f'{SYSFS_PCI}/{bdf}/vendor')[2:]}:{_read(f'{SYSFS_PCI}/{bdf}/device')[2:]}"


@pytest.fixture(scope="module")
def viommu_bdf(harness_iommu) -> str:
    assert harness_iommu == "virtio", f"VFIO_HARNESS_IOMMU={harness_iommu!r}: not a virtio-iommu guest"
    units = sorted(os.listdir("/sys/class/iommu"))
    assert len(units) == 1, f"expected one IOMMU unit (the virtio-iommu), found {units}"
    # the unit's device is the virtio device (virtioN), a child of the PCI function
    dev = os.path.realpath(f"/sys/class/iommu/{units[0]}/device")
    pci = os.listdir(SYSFS_PCI)
    while os.path.basename(dev) not in pci and dev != "/":
        dev = os.path.dirname(dev)
    bdf = os.path.basename(dev)
    assert bdf in pci, f"IOMMU unit {units[0]} is not under a PCI device"
    assert _pci_id(bdf) == VIRTIO_IOMMU_ID, f"IOMMU unit {units[0]} belongs to {bdf} [{_pci_id(bdf)}]"
    return bdf


def test_the_only_iommu_unit_is_the_virtio_iommu(viommu_bdf):
    assert Host("/").device(viommu_bdf).driver == "virtio-pci"
    assert not os.path.exists("/sys/firmware/acpi/tables/DMAR"), "a VT-d DMAR table in a virtio-iommu guest"
    assert os.path.exists("/sys/firmware/acpi/tables/VIOT"), "no ACPI VIOT table: how was the IOMMU found?"


def test_every_endpoint_but_the_iommu_has_a_group(viommu_bdf):
    # QEMU's VIOT puts the whole PCI segment behind the virtio-iommu, except itself;
    # the guest's own virtio-9p devices (probed before the IOMMU module loaded) included.
    host = Host("/")
    missing = [bdf for bdf in sorted(os.listdir(SYSFS_PCI))
               if bdf != viommu_bdf and host.device(bdf).iommu_group is None]
    assert missing == [], f"PCI devices without an IOMMU group: {missing}"
    assert host.device(viommu_bdf).iommu_group is None, "the virtio-iommu translates itself?"


def test_edu_on_vfio_pci_with_a_group_node(edu_bdf):
    group = Host("/").device(edu_bdf).iommu_group
    assert group is not None and os.path.exists(f"/dev/vfio/{group}"), (group, os.listdir("/dev/vfio"))


def test_type1_allows_unremapped_interrupts():
    # Without it VFIO_GROUP_SET_CONTAINER fails with EPERM on this IOMMU.
    assert _read("/sys/module/vfio_iommu_type1/parameters/allow_unsafe_interrupts") == "Y"


@pytest.mark.parametrize("name,ids,driver", [("nvme", "1b36:0010", "nvme"), ("e1000e", "8086:10d3", "e1000e")])
def test_native_devices_keep_their_drivers(name, ids, driver):
    devs = Host("/").find(ids)
    assert [(d.driver, d.iommu_group is not None) for d in devs] == [(driver, True)], \
        f"{name}: {[(d.bdf, d.driver, d.iommu_group) for d in devs]}"
