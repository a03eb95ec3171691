"""The fd layer reads sysfs through the one door (vfio.sysfs.SysfsTree), so a
captured tree answers group and cdev lookups as the live system would; every
open of a VFIO or iommufd node goes through uapi.open_node (errno kept, the
node named)."""

from __future__ import annotations

import ast
import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.container import Container
from vfio.group import Group, group_path_of, iommu_group_of
from vfio.host.sysfs import Host
from vfio.iommufd import CdevBackend, IommuFD, cdev_path_of
from vfio.sysfs import PCI_DEVICES, HostError, SysfsTree

EDU = "0000:00:03.0"          # on vfio-pci in the q35 guest tree, group 3, /dev/vfio/3


def test_group_of_every_device_in_a_captured_tree_is_the_host_models(tree):
    t = SysfsTree(tree)
    host = Host(tree)
    devs = host.devices()
    assert len(devs) == 12
    for d in devs:
        assert iommu_group_of(d.bdf, t) == d.iommu_group
    assert iommu_group_of("00:1f.2", t) == iommu_group_of("0000:00:1f.3", t) == "8"


def test_group_node_of_a_bdf_is_the_trees(tree):
    assert group_path_of("00:03.0", SysfsTree(tree)) == os.path.join(tree, "dev", "vfio", "3")
    # the older form of the argument, a PCI devices directory, finds the same tree
    assert iommu_group_of(EDU, os.path.join(tree, PCI_DEVICES)) == "3"
    # nvme is in group 4, which has no node: not on vfio-pci
    with pytest.raises(vfio.VfioError, match="is the device bound to vfio-pci") as ei:
        group_path_of("0000:00:04.0", SysfsTree(tree))
    assert ei.value.errno == errno.ENOENT


def test_group_lookup_errors_name_the_path_and_keep_errno(tree):
    t = SysfsTree(tree)
    with pytest.raises(vfio.VfioError, match=r"no /sys/bus/pci/devices/0000:00:09\.0") as ei:
        iommu_group_of("00:09.0", t)
    assert ei.value.errno == errno.ENODEV
    link = os.path.join(tree, PCI_DEVICES, "0000:00:06.0", "iommu_group")
    os.unlink(link)
    with pytest.raises(vfio.VfioError, match=r"/sys/bus/pci/devices/0000:00:06\.0/iommu_group\): device has no IOMMU") as ei:
        iommu_group_of("0000:00:06.0", t)
    assert ei.value.errno == errno.ENOENT
    open(link, "w").close()                 # a malformed tree: a file where the link belongs
    with pytest.raises(vfio.VfioError, match="iommu_group") as ei:
        iommu_group_of("0000:00:06.0", t)
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(ValueError, match="not a PCI address"):
        iommu_group_of("0:3", t)


def test_cdev_of_a_device_from_its_vfio_dev_entry(tree):
    t = SysfsTree(tree)
    with pytest.raises(vfio.VfioError, match=r"no /sys/bus/pci/devices/0000:00:03\.0/vfio-dev") as ei:
        cdev_path_of(EDU, t)
    assert ei.value.errno == errno.ENOENT
    # what sysfs shows of a device on vfio-pci on a kernel with VFIO_DEVICE_CDEV
    os.makedirs(os.path.join(tree, PCI_DEVICES, EDU, "vfio-dev", "vfio2"))
    assert cdev_path_of("00:03.0", t) == os.path.join(tree, "dev", "vfio", "devices", "vfio2")
    assert cdev_path_of(EDU, t, devdir="/dev/vfio/devices") == "/dev/vfio/devices/vfio2"


def test_interfaces_of_a_captured_tree(tree):
    assert vfio.available_interfaces(os.path.join(tree, "dev")) == {
        "container": True, "cdev": False, "noiommu_groups": [], "groups": ["3"]}
    assert Host(tree).interfaces()["groups"] == ["3"]


def test_door_is_at_the_bottom_and_host_builds_on_it():
    from vfio.host import sysfs as host_sysfs
    path = os.path.join(os.path.dirname(vfio.__file__), "sysfs.py")
    mods = {n.module for n in ast.walk(ast.parse(open(path).read()))
            if isinstance(n, ast.ImportFrom) and n.level}
    assert mods <= {"errors", "address"}
    assert issubclass(host_sysfs.Sysfs, SysfsTree) and host_sysfs.HostError is HostError
    for name in ("PCI_DEVICES", "PCI_DRIVERS", "IOMMU_GROUPS", "IOMMU_CLASS", "MAX_ENTRIES",
                 "DryRunSysfs", "DeviceNotFound", "FAULT_ENV", "Action"):
        assert hasattr(host_sysfs, name)


def test_malformed_tree_errors_keep_errno(tree):
    t = SysfsTree(tree)
    with pytest.raises(HostError, match="is not a symlink") as ei:
        t.link_name(f"{PCI_DEVICES}/{EDU}/vendor")
    assert ei.value.errno == errno.EINVAL
    with pytest.raises(vfio.VfioError, match=r"reading /sys/bus/pci/devices/0000:00:03\.0/nothing") as ei:
        t.read(f"{PCI_DEVICES}/{EDU}/nothing")
    assert ei.value.errno == errno.ENOENT


# ---- the raw open chokepoint --------------------------------------------------------
def test_open_node_keeps_errno_and_names_the_node(tmp_path):
    missing = str(tmp_path / "vfio" / "7")
    with pytest.raises(vfio.VfioError, match=rf"open VFIO group {missing}: No such file") as ei:
        Group(missing)
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(vfio.VfioError, match=rf"open VFIO container {tmp_path}/c") as ei:
        Container(str(tmp_path / "c"))
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(vfio.VfioError, match=r"CONFIG_IOMMUFD") as ei:
        IommuFD(str(tmp_path / "iommu"))
    assert ei.value.errno == errno.ENOENT
    with pytest.raises(vfio.VfioError, match=rf"open VFIO cdev {tmp_path}/vfio0 of {EDU}") as ei:
        CdevBackend(str(tmp_path / "vfio0"), None, EDU)
    assert ei.value.errno == errno.ENOENT


@pytest.mark.parametrize("err, hint", [(errno.EBUSY, "already open"), (errno.EACCES, "permission denied"),
                                       (errno.EPERM, "permission denied"), (errno.ENXIO, None)])
def test_group_open_hints_by_errno(monkeypatch, err, hint):
    def refuse(path, flags):
        raise OSError(err, os.strerror(err))
    monkeypatch.setattr(os, "open", refuse)
    with pytest.raises(vfio.VfioError) as ei:
        Group("/dev/vfio/7")
    assert ei.value.errno == err and "open VFIO group /dev/vfio/7" in str(ei.value)
    assert (hint in str(ei.value)) if hint else "(" not in str(ei.value)


def test_open_node_returns_the_fd(tmp_path):
    p = tmp_path / "node"
    p.write_bytes(b"x")
    fd = uapi.open_node(str(p), os.O_RDONLY | os.O_CLOEXEC, f"open {p}")
    try:
        assert os.read(fd, 1) == b"x"
    finally:
        os.close(fd)


def test_fd_layer_finds_the_nodes_of_a_device_the_host_tools_assigned(tree):
    # the same door under both: vfio-assign changes a (simulated) tree through Sysfs,
    # the fd layer then finds the group node and the cdev in it
    from vfio.host.assign import Assigner
    from vfio.host.simulate import SimulatedSysfs
    e1000e = "0000:01:00.0"
    os.makedirs(os.path.join(tree, "dev", "vfio", "devices"))      # a VFIO_DEVICE_CDEV kernel
    sim = SimulatedSysfs(tree)
    with pytest.raises(vfio.VfioError, match="is the device bound to vfio-pci"):
        group_path_of(e1000e, sim)
    Assigner(Host(sysfs=sim)).assign([e1000e])
    assert group_path_of(e1000e, sim) == os.path.join(tree, "dev", "vfio", "9")
    cdev = cdev_path_of(e1000e, sim)
    assert os.path.dirname(cdev) == os.path.join(tree, "dev", "vfio", "devices") and os.path.exists(cdev)
    assert os.path.basename(cdev) == sim.listdir(f"{PCI_DEVICES}/{e1000e}/vfio-dev")[0]
