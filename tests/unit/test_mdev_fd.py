"""The fd layer's mdev lookups on a fixture tree: group and cdev nodes by UUID,
the errors before anything is opened, and the device_api check."""

from __future__ import annotations

import errno
from types import SimpleNamespace

import pytest

from tests.unit.test_mdev_host import U1, U2, KernelLikeSysfs, build_tree
from vfio import uapi
from vfio.errors import VfioError
from vfio.host.mdev import DeviceApi, MdevHost, mdev_cdev_path, mdev_device_api, mdev_group_path
from vfio.open import _check_device_api, open_mdev_device
from vfio.sysfs import SysfsTree


@pytest.fixture
def root(tmp_path):
    r = build_tree(str(tmp_path / "root"))
    MdevHost(sysfs=KernelLikeSysfs(r)).create("mtty", "mtty-2", U1)
    return r


def test_nodes_by_uuid(root):
    assert mdev_group_path(U1.upper(), SysfsTree(root)) == f"{root}/dev/vfio/6"
    assert mdev_cdev_path(U1, root) == f"{root}/dev/vfio/devices/vfio1"
    assert mdev_device_api(U1, root) is DeviceApi.PCI


@pytest.mark.parametrize("interface", ["container", "cdev"])
def test_open_errors_come_before_anything_is_opened(root, interface):
    with pytest.raises(VfioError) as e:
        open_mdev_device(U2, interface=interface, sysfs=root)
    assert e.value.errno == errno.ENODEV and U2 in str(e.value) and "/sys/bus/mdev/devices" in str(e.value)
    with pytest.raises(ValueError, match="malformed mdev UUID"):
        open_mdev_device("123", interface=interface, sysfs=root)
    with pytest.raises(ValueError, match="interface must be"):
        open_mdev_device(U1, interface="vfio", sysfs=root)


def test_no_cdev_is_said(root):
    import shutil
    shutil.rmtree(f"{root}/sys/devices/virtual/mtty/mtty/{U1}/vfio-dev")
    with pytest.raises(VfioError) as e:
        mdev_cdev_path(U1, root)
    assert e.value.errno == errno.ENOENT and "CONFIG_VFIO_DEVICE_CDEV" in str(e.value)


def test_device_api_is_held_against_the_flags(root):
    pci = SimpleNamespace(name=U1, info=SimpleNamespace(flags=uapi.VFIO_DEVICE_FLAGS_PCI))
    _check_device_api(pci, root)                        # agrees: nothing said
    ccw = SimpleNamespace(name=U1, info=SimpleNamespace(flags=uapi.VFIO_DEVICE_FLAGS_CCW))
    with pytest.raises(VfioError) as e:
        _check_device_api(ccw, root)
    assert e.value.errno == errno.EPROTO and "device_api is vfio-pci" in str(e.value)
    with open(f"{root}/sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/device_api", "w") as f:
        f.write("vfio-ccw\n")
    _check_device_api(ccw, root)
    with open(f"{root}/sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-2/device_api", "w") as f:
        f.write("vfio-new\n")
    _check_device_api(ccw, root)                        # an API unknown here is not checked
