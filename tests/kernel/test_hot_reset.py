"""PCI hot reset (bus reset) through VFIO against the real kernel.

The harness puts e1000e behind its own PCIe root port (a device on a root bus
has no bus to reset: vfio-pci answers ENODEV there, see test_fd_layer).  The
test assigns it to vfio-pci with the toolkit, asks which devices a reset of
that bus affects, resets it with the group fd as proof of ownership, and
puts it back on its driver.
"""

from __future__ import annotations

import errno

import pytest

import vfio
from vfio.errors import VfioError
from vfio.host.assign import Assigner
from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

E1000E = "8086:10d3"


def test_hot_reset_of_a_device_behind_a_root_port(tmp_path):
    host = Host("/")
    [nic] = [d for d in host.devices() if d.ids == E1000E]
    assert nic.driver == "e1000e"
    a = Assigner(host, str(tmp_path / "state.json"))
    a.assign([nic.bdf], force=True)          # force: the guest may have brought the interface up
    try:
        with vfio.open_pci_device(nic.bdf) as dev:
            info = dev.hot_reset_info()
            group = int(host.device(nic.bdf).iommu_group)
            assert [(d.bdf, d.group_id) for d in info.devices] == [(nic.bdf, group)]
            before = dev.config.read32(0)
            dev.hot_reset([dev.group.fd])
            assert dev.config.read32(0) == before == 0x10D38086
            # an empty group list is only for cdev-opened devices: the group path must prove ownership
            with pytest.raises(VfioError) as ei:
                dev.hot_reset([])
            assert ei.value.errno == errno.EINVAL
    finally:
        a.release([nic.bdf])
    assert host.device(nic.bdf).driver == "e1000e"
