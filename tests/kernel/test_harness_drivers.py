"""The harness guest loads native drivers the way udev would.

There is no udev in the guest, so tools/vfio-harness does its job for PCI: after
binding the --bind devices to vfio-pci, every PCI device still without a driver
gets ``modprobe`` of its modalias (the kernel's ``pci:v...d...sv...sd...bc...sc...i..``
string, matched against modules.alias).  That covers the harness's own devices,
anything added with ``--qemu-arg`` and q35's chipset functions (AHCI, SMBus, LPC).

Whether a loaded driver then binds is the driver's business (intel-agp, say,
declines q35's host bridge), so the check is: every module that a driverless
device's modalias resolves to is loaded.  Runs on the host-tools leg (Debian's
modular kernel; nvme and e1000e on their own drivers).
"""

from __future__ import annotations

import os
import subprocess

import pytest

from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

SYSFS_PCI = "/sys/bus/pci/devices"


def _builtin_modules() -> set[str]:
    release = os.uname().release
    with open(f"/lib/modules/{release}/modules.builtin") as f:
        return {os.path.basename(line.strip()).removesuffix(".ko").replace("-", "_") for line in f}


def test_modular_kernel():
    # The premise of the leg: Debian's kernel, whose drivers are modules.
    assert os.path.exists("/proc/modules") and os.path.isdir("/sys/module/vfio_pci"), \
        "not a modular kernel with vfio-pci loaded as a module"


def test_every_driverless_device_had_its_modules_loaded():
    builtin = _builtin_modules()
    not_loaded = {}
    for bdf in sorted(os.listdir(SYSFS_PCI)):
        if os.path.exists(f"{SYSFS_PCI}/{bdf}/driver"):
            continue
        with open(f"{SYSFS_PCI}/{bdf}/modalias") as f:
            alias = f.read().strip()
        r = subprocess.run(["modprobe", "--resolve-alias", alias], capture_output=True, text=True)
        mods = [m.replace("-", "_") for m in r.stdout.split()] if r.returncode == 0 else []
        missing = [m for m in mods if m not in builtin and not os.path.isdir(f"/sys/module/{m}")]
        if missing:
            not_loaded[bdf] = (alias, missing)
    assert not_loaded == {}, f"driverless devices whose modules were never loaded: {not_loaded}"


@pytest.mark.parametrize("ids,driver", [
    ("1b36:0010", "nvme"),      # harness device left off --bind
    ("8086:10d3", "e1000e"),    # harness device left off --bind
    ("8086:2922", "ahci"),      # q35's own AHCI function (00:1f.2): no harness device name
])
def test_native_driver_bound(ids, driver):
    devs = Host("/").find(ids)
    assert devs and all(d.driver == driver for d in devs), [(d.bdf, d.driver) for d in devs]
