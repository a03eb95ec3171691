"""vfio-assign under virtio-iommu: a device no driver has probed has no IOMMU
group yet (with ACPI VIOT the kernel attaches a device to the IOMMU in
``dma_configure()``, at driver probe), although the host has an IOMMU.
vfio-assign must not call that "no IOMMU": it binds the device, reads the
group it got and checks it.

Runs in the virtio-iommu leg (tools/vfio-harness --iommu virtio --devices
edu,nvme,e1000e --bind edu, ``-m virtio_iommu``).  The e1000e is made into
a never-probed device by removing it and rescanning with
its driver unloaded, and is given back to e1000e afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.virtio_iommu]

E1000E = "8086:10d3"
HOW = "run in the virtio-iommu leg: tools/vfio-harness --iommu virtio --devices edu,nvme,e1000e --bind edu -- ..."


def _put(path: str, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _sh(*args) -> None:
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: {r.stderr}"


@pytest.fixture
def unprobed():
    """The e1000e, removed and found again while its driver is unloaded: no driver
    has probed it, so no group.  (drivers_autoprobe would not do: PCI calls
    device_attach() itself when it adds a device.)  Back on e1000e afterwards."""
    host = Host("/")
    if os.environ.get("VFIO_HARNESS_IOMMU") != "virtio" or not os.listdir("/sys/class/iommu"):
        pytest.fail(f"not a virtio-iommu guest; {HOW}", pytrace=False)
    found = [d for d in host.devices() if d.ids == E1000E]
    if len(found) != 1:
        pytest.fail(f"want one e1000e, found {[d.bdf for d in found]}; {HOW}", pytrace=False)
    bdf = found[0].bdf
    _sh("rmmod", "e1000e")
    try:
        _put(f"/sys/bus/pci/devices/{bdf}/remove", "1")
        _put("/sys/bus/pci/rescan", "1")
        for _ in range(100):
            if os.path.exists(f"/sys/bus/pci/devices/{bdf}"):
                break
            time.sleep(0.1)
        yield bdf
    finally:
        _sh("modprobe", "e1000e")            # binds every e1000e without a driver
        d = Host("/").device(bdf)
        assert (d.driver, d.driver_override) == ("e1000e", None), f"{bdf} left on {d.driver}"


def test_a_device_without_a_group_yet_is_bound_and_works(unprobed, tmp_path):
    import vfio
    host = Host("/")
    d = host.device(unprobed)
    assert (d.driver, d.iommu_group) == (None, None), "the premise: never probed, so no group yet"
    assert host.has_iommu
    state = str(tmp_path / "state.json")
    cli = lambda *a: subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", *a, "--state", state],
                                    capture_output=True, text=True, timeout=300)
    r = cli("bind", unprobed)
    assert r.returncode == 0, r.stderr
    d = host.device(unprobed)
    assert (d.driver, d.driver_override) == ("vfio-pci", "vfio-pci") and d.iommu_group is not None
    assert f"IOMMU group {d.iommu_group}: /dev/vfio/{d.iommu_group}" in r.stdout
    assert os.path.exists(f"/dev/vfio/{d.iommu_group}")
    with vfio.open_pci_device(unprobed) as dev:               # and it works through VFIO
        assert dev.config.read16(0) == 0x8086
    r = cli("release", unprobed)
    assert r.returncode == 0, r.stderr
    d = host.device(unprobed)
    assert (d.driver, d.driver_override) == (None, None)      # as it was: no driver
    assert cli("status", "--json").stdout.count('"condition"') == 0
