"""Viability of IOMMU groups that hold more than PCI functions.

The kernel counts every member of a group the same way
(``iommu_group_dma_owner_claimed``): a member whose bus claims DMA ownership
for its driver (PCI, platform, AMBA, fsl-mc, CDX: ``dma_configure`` ->
``iommu_device_use_default_domain`` unless the driver sets
``driver_managed_dma``) blocks the group while it is bound to a driver other
than a VFIO one; a member on a bus that claims nothing (mdev) never blocks.
The fixture is a copy of the q35 guest's captured tree with non-PCI members
added to group 3 (edu on vfio-pci, viable on its own).
"""

from __future__ import annotations

import os

import pytest

from vfio.errors import InvalidValue
from vfio.host.sysfs import Host
from vfio.host.viability import group_viability, predict

PLAT = "a000000.virtio_mmio"
MDEV = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"


def _link(root, rel, target_rel):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(root, target_rel), os.path.dirname(p)), p)


def _member(root, group, name, bus, driver=None, subsystem=True, devdir=None):
    """Put device ``name`` on ``bus`` into IOMMU group ``group`` (bound to ``driver``)."""
    d = devdir or f"sys/devices/platform/{name}"
    os.makedirs(os.path.join(root, d), exist_ok=True)
    if subsystem:
        _link(root, f"{d}/subsystem", f"sys/bus/{bus}")
    _link(root, f"sys/bus/{bus}/devices/{name}", d)
    if driver is not None:
        os.makedirs(os.path.join(root, f"sys/bus/{bus}/drivers/{driver}"), exist_ok=True)
        _link(root, f"{d}/driver", f"sys/bus/{bus}/drivers/{driver}")
    _link(root, f"sys/kernel/iommu_groups/{group}/devices/{name}", d)


def test_a_pci_only_group_is_judged_as_before(tree):
    h = Host(tree)
    v = predict(h.group("3"), h)
    assert v.viable and [m.bdf for m in v.members] == ["0000:00:03.0"]
    assert predict(h.group("3")).viable          # no non-PCI member: no host needed


@pytest.mark.parametrize("driver,viable", [(None, True), ("vfio-platform", True), ("virtio-mmio", False)])
def test_a_platform_member_counts_like_a_pci_one(tree, driver, viable):
    _member(tree, "3", PLAT, "platform", driver)
    h = Host(tree)
    g = h.group("3")
    assert g.others == (PLAT,)
    v = predict(g, h)
    assert v.viable is viable
    if not viable:
        assert [m.bdf for m in v.blockers] == [PLAT]
        assert f"{PLAT} (platform) is bound to virtio-mmio" in v.why_not()
    # inspect's path (a captured tree: the kernel is not asked) gives the same verdict
    assert group_viability(h, g).viable is viable


def test_an_amba_member_on_its_own_driver_blocks(tree):
    _member(tree, "3", "9010000.pl031", "amba", "rtc-pl031")
    h = Host(tree)
    assert not predict(h.group("3"), h).viable
    os.unlink(os.path.join(tree, "sys/devices/platform/9010000.pl031/driver"))
    _link(tree, "sys/devices/platform/9010000.pl031/driver", "sys/bus/amba/drivers/vfio-amba")
    assert predict(h.group("3"), h).viable


def test_an_mdev_never_blocks_whatever_its_driver(tree):
    # the mdev bus has no dma_configure: binding claims no DMA ownership of the group
    _member(tree, "3", MDEV, "mdev", "mtty", devdir=f"sys/devices/virtual/mtty/mtty/{MDEV}")
    h = Host(tree)
    v = predict(h.group("3"), h)
    assert v.viable and "mdev bus (mtty)" in [m.reason for m in v.members if m.bdf == MDEV][0]


def test_the_bus_is_found_without_a_subsystem_link(tree):
    _member(tree, "3", PLAT, "platform", "virtio-mmio", subsystem=False)
    h = Host(tree)
    assert [m.bdf for m in predict(h.group("3"), h).blockers] == [PLAT]


def test_a_member_on_an_unknown_bus_with_a_driver_blocks(tree):
    d = "sys/devices/odd/thing0"
    os.makedirs(os.path.join(tree, d))
    os.makedirs(os.path.join(tree, "sys/bus/odd/drivers/odd-drv"))
    _link(tree, f"{d}/driver", "sys/bus/odd/drivers/odd-drv")
    _link(tree, "sys/kernel/iommu_groups/3/devices/thing0", d)
    h = Host(tree)
    v = predict(h.group("3"), h)
    assert not v.viable and "counted as owning its DMA" in v.why_not()


def test_without_a_host_non_pci_members_are_not_guessed(tree):
    _member(tree, "3", PLAT, "platform", None)
    with pytest.raises(InvalidValue, match=f"also holds {PLAT}"):
        predict(Host(tree).group("3"))


def test_vfio_assign_refuses_a_pci_group_a_platform_member_keeps_unviable(tree):
    from vfio.host.assign import Assigner, AssignmentRefused
    _member(tree, "3", PLAT, "platform", "virtio-mmio")
    a = Assigner(Host(tree), os.path.join(tree, "st.json"))
    with pytest.raises(AssignmentRefused, match=f"IOMMU group 3 of 0000:00:03.0 is not viable while {PLAT} "
                                                r"\(platform\) is bound to virtio-mmio.*vfio-assign bind " + PLAT):
        a.plan_assign(["0000:00:03.0"])
    os.unlink(os.path.join(tree, f"sys/devices/platform/{PLAT}/driver"))
    a.plan_assign(["0000:00:03.0"])             # on no driver: nothing stands in the way
