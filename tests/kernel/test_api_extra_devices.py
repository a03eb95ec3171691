"""The public API with devices the default harness guest lacks.

Needs the harness devices ``pci-testdev`` and ``edu-mf`` (edu at 0x10.0 with
multifunction=on and 0x10.1), which the host-tools leg has, hence the
``native_drivers`` marker that routes these tests there.

Two functions of one multifunction slot without ACS share an IOMMU group; the
devices are found by vendor:device and the group by sysfs, never by address,
and bound to vfio-pci here when the harness did not.  pci-testdev (1b36:0005)
has no interrupt pin and neither MSI nor MSI-X: every IRQ index has count 0.
"""

from __future__ import annotations

import contextlib
import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.errors import VfioError
from vfio.host.sysfs import Host

from tests.kernel import kernel_edu as edu_dev

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

EDU_ID = "1234:11e8"
TESTDEV_ID = "1b36:0005"
_NEEDS = "run with tools/vfio-harness --devices edu,nvme,pci-testdev,edu-mf (the host-tools leg has them)"


def _sysfs_write(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


@contextlib.contextmanager
def _on_vfio(bdfs):
    """Bind ``bdfs`` to vfio-pci (driver_override + drivers_probe, as vfio-assign does)
    for the duration, then put each back on the driver it had (or none), so the
    other tests of the leg find the devices as the harness left them."""
    before = {b: Host().device(b).driver for b in bdfs}
    try:
        for bdf, drv in before.items():
            if drv == "vfio-pci":
                continue
            base = f"/sys/bus/pci/devices/{bdf}"
            _sysfs_write(f"{base}/driver_override", "vfio-pci")
            if drv:
                _sysfs_write(f"{base}/driver/unbind", bdf)
            _sysfs_write("/sys/bus/pci/drivers_probe", bdf)
            assert Host().device(bdf).driver == "vfio-pci", f"{bdf} did not bind to vfio-pci"
        yield
    finally:
        for bdf, drv in before.items():
            if drv == "vfio-pci":
                continue
            base = f"/sys/bus/pci/devices/{bdf}"
            if Host().device(bdf).driver:
                _sysfs_write(f"{base}/driver/unbind", bdf)
            _sysfs_write(f"{base}/driver_override", "\n")
            if drv:
                _sysfs_write("/sys/bus/pci/drivers_probe", bdf)
            assert Host().device(bdf).driver == drv, f"{bdf} not back on {drv}"


@pytest.fixture(scope="module")
def edu_pair():
    """Two edu functions in one IOMMU group, bound to vfio-pci while the module runs."""
    groups = {}
    for d in Host().find(EDU_ID):
        if d.iommu_group is not None:
            groups.setdefault(d.iommu_group, []).append(d.bdf)
    shared = [sorted(bdfs) for bdfs in groups.values() if len(bdfs) >= 2]
    if not shared:
        pytest.fail(f"no two edu functions share an IOMMU group (groups: {groups}); {_NEEDS}", pytrace=False)
    a, b = shared[0][:2]
    # the whole group must be on vfio-pci to be viable
    members = os.listdir(f"/sys/kernel/iommu_groups/{Host().device(a).iommu_group}/devices")
    with _on_vfio(members):
        yield a, b


def test_second_device_of_a_group_through_the_first_ones_container(edu_pair):
    a, b = edu_pair
    with contextlib.ExitStack() as cleanup:       # closes what a failed assertion leaves open
        _two_devices_of_a_group(a, b, cleanup)
    # nothing stays busy: both open again, in the other order
    with vfio.open_pci_device(b) as d2, vfio.open_pci_device(a, container=d2.container) as d1:
        assert d1.group is d2.group and d1.region(0).read32(0) == edu_dev.ID


def _two_devices_of_a_group(a, b, cleanup):
    first = cleanup.enter_context(vfio.open_pci_device(a, interface="container"))
    # without container= the group is already open: EBUSY, and the message says what to do
    with pytest.raises(VfioError) as ei:
        vfio.open_pci_device(b, interface="container")
    assert ei.value.errno == errno.EBUSY and "container=" in str(ei.value)
    second = cleanup.enter_context(vfio.open_pci_device(b, container=first.container))
    group, container = first.group, first.container
    assert second.group is group and second.container is container and group.users == 2
    assert container.groups == [group]
    for dev in (first, second):
        assert dev.region(0).read32(0) == edu_dev.ID
        dev.enable_bus_master()
    m = first.dma.alloc(0x2000, limit=edu_dev.DMA_MASK)
    assert second.dma is first.dma
    with second.region(0).map() as bar:
        assert edu_dev.round_trip(bar, m)
    # the first device goes; the group, the container and the mapping stay for the second
    first.close()
    assert group.fd >= 0 and container.fd >= 0 and m.mapped and group.users == 1
    with second.region(0).map() as bar:
        assert edu_dev.round_trip(bar, m, 512)
    second.close()
    assert group.fd == -1 and container.fd == -1 and not m.mapped


def test_callers_container_with_two_devices_of_a_group(edu_pair):
    a, b = edu_pair
    with vfio.Container() as c, contextlib.ExitStack() as cleanup:
        d1 = cleanup.enter_context(vfio.open_pci_device(a, container=c))
        d2 = cleanup.enter_context(vfio.open_pci_device(b, container=c))
        assert d1.group is d2.group and c.groups == [d1.group]
        m = c.alloc(0x1000)
        d2.close()
        assert m.mapped and c.iommu_type is not None
        d1.close()
        assert not m.mapped and c.groups == [] and c.fd >= 0


def test_enable_irq_on_a_device_without_vectors():
    devs = [d.bdf for d in Host().find(TESTDEV_ID)]
    if not devs:
        pytest.fail(f"no pci-testdev ({TESTDEV_ID}) in the guest; {_NEEDS}", pytrace=False)
    with _on_vfio(devs[:1]), vfio.open_pci_device(devs[0]) as dev:
        for index, name in ((uapi.VFIO_PCI_INTX_IRQ_INDEX, "INTx"), (uapi.VFIO_PCI_MSI_IRQ_INDEX, "MSI"),
                            (uapi.VFIO_PCI_MSIX_IRQ_INDEX, "MSI-X")):
            assert dev.irq_info(index).count == 0
            with pytest.raises(VfioError) as ei:
                dev.enable_irq(index)
            msg = str(ei.value)
            assert ei.value.errno == errno.EINVAL
            assert f"({name})" in msg and "has no vectors" in msg and devs[0] in msg and "SET_IRQS" not in msg
