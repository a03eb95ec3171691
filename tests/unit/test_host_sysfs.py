"""The sysfs host model, viability and in-use checks, against trees captured
from real machines (fixtures/sysfs/, made by tools/capture-sysfs):

* ``q35-guest``: the QEMU test guest (stock Debian 6.12, intel-iommu): edu on
  vfio-pci, nvme with a mounted namespace, e1000e behind a PCIe root port
  (interface down), e1000 up with an address, a boot VGA with no driver, and
  ICH9 LPC/SATA/SMBus sharing IOMMU group 8.
* ``host-virtio``: a cloud VM without an IOMMU: root filesystem on virtio-blk
  0000:00:02.0, eth0 up with addresses on 0000:00:03.0.
"""

from __future__ import annotations

import os
import shutil

import pytest

from vfio.errors import VfioError
from vfio.host.inuse import usage_of
from vfio.host.sysfs import Action, DeviceNotFound, DryRunSysfs, Host, HostError, Sysfs
from vfio.host.viability import DMA_SAFE_DRIVERS, group_viability, predict

from tests.paths import SYSFS_TREES as FIXTURES
GUEST = os.path.join(FIXTURES, "q35-guest")
VIRTIO = os.path.join(FIXTURES, "host-virtio")


@pytest.fixture
def guest() -> Host:
    return Host(GUEST)


@pytest.fixture
def tree(tmp_path):
    """A writable copy of the guest tree."""
    dst = tmp_path / "root"
    shutil.copytree(GUEST, dst, symlinks=True)
    return str(dst)


# ---- model -------------------------------------------------------------------------

def test_guest_devices_drivers_and_groups(guest):
    devs = {d.bdf: d for d in guest.devices()}
    assert len(devs) == 12
    nvme = devs["0000:00:04.0"]
    assert (nvme.vendor, nvme.device, nvme.class_code) == (0x1B36, 0x0010, 0x010802)
    assert nvme.driver == "nvme" and nvme.driver_override is None and nvme.iommu_group == "4"
    edu = devs["0000:00:03.0"]
    assert edu.driver == "vfio-pci" and edu.driver_override == "vfio-pci"
    e1000e = devs["0000:01:00.0"]
    assert e1000e.parent == "0000:00:05.0" and devs["0000:00:05.0"].is_pci_bridge
    assert devs["0000:00:1f.0"].is_bridge and not devs["0000:00:1f.0"].is_pci_bridge
    assert devs["0000:00:07.0"].boot_vga and not nvme.boot_vga
    assert guest.has_iommu
    assert guest.group("8").bdfs == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    assert [g.number for g in guest.groups()] == [str(i) for i in range(10)]


def test_no_iommu_host_has_no_groups():
    h = Host(VIRTIO)
    assert not h.has_iommu and h.groups() == []
    assert all(d.iommu_group is None for d in h.devices())
    assert h.interfaces()["container"] is False


def test_interfaces_from_dev_nodes(guest):
    info = guest.interfaces()
    assert info["container"] is True and info["cdev"] is False
    assert info["groups"] == ["3"] and info["noiommu_groups"] == []


def test_find_by_bdf_short_bdf_and_ids(guest):
    assert [d.bdf for d in guest.find("01:00.0")] == ["0000:01:00.0"]
    assert [d.bdf for d in guest.find("8086:10D3")] == ["0000:01:00.0"]
    assert [d.bdf for d in guest.find("1af4:1009")] == ["0000:00:01.0", "0000:00:02.0"]


@pytest.mark.parametrize("spec,cls,text", [
    ("00:09.0", DeviceNotFound, "/sys/bus/pci/devices/0000:00:09.0 does not exist"),
    ("dead:beef", DeviceNotFound, "vendor:device dead:beef"),
    ("0000:00:04", HostError, "neither a PCI address"),
    ("zz:00.0", HostError, "neither a PCI address"),
])
def test_bad_device_names_are_named_in_the_error(guest, spec, cls, text):
    with pytest.raises(cls) as e:
        guest.find(spec)
    assert text in str(e.value)


def test_malformed_attribute_names_the_file(tree):
    with open(os.path.join(tree, "sys/bus/pci/devices/0000:00:04.0/vendor"), "w") as f:
        f.write("nonsense\n")
    with pytest.raises(HostError, match=r"/sys/bus/pci/devices/0000:00:04.0/vendor: expected a hex number"):
        Host(tree).device("00:04.0")


def test_config_is_the_captured_bytes(guest):
    data = guest.config("0000:00:04.0")
    assert len(data) == 4096 and data[:4] == bytes.fromhex("361b1000")


def test_sysfs_write_is_one_write_and_errors_keep_errno(tmp_path):
    s = Sysfs(str(tmp_path))
    (tmp_path / "attr").write_text("")
    s.write("attr", "vfio-pci")
    assert (tmp_path / "attr").read_text() == "vfio-pci"
    with pytest.raises(VfioError) as e:
        s.write("missing/attr", "x")
    assert e.value.errno == 2 and "/missing/attr" in str(e.value)


def test_dry_run_records_and_changes_nothing(tree):
    s = DryRunSysfs(tree)
    before = open(os.path.join(tree, "sys/bus/pci/devices/0000:00:04.0/driver_override")).read()
    s.write("sys/bus/pci/devices/0000:00:04.0/driver_override", "vfio-pci")
    s.chown("dev/vfio/3", 107, -1)
    s.modprobe("vfio-pci")
    assert open(os.path.join(tree, "sys/bus/pci/devices/0000:00:04.0/driver_override")).read() == before
    assert [str(a) for a in s.actions] == [
        "echo vfio-pci > /sys/bus/pci/devices/0000:00:04.0/driver_override",
        "chown 107 /dev/vfio/3", "modprobe vfio-pci"]
    assert str(Action("write", "/sys/x", "\n")) == "echo > /sys/x"


# ---- viability ---------------------------------------------------------------------

def test_viability_follows_dma_ownership(guest):
    v = {g.number: predict(g) for g in guest.groups()}
    assert v["3"].viable            # edu on vfio-pci
    assert v["0"].viable            # host bridge, no driver
    assert v["5"].viable            # root port on pcieport
    assert not v["4"].viable and "0000:00:04.0 is bound to nvme" in v["4"].why_not()
    assert not v["8"].viable
    assert [m.bdf for m in v["8"].blockers] == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    assert "vfio-pci" in DMA_SAFE_DRIVERS and "pcieport" in DMA_SAFE_DRIVERS and "nvme" not in DMA_SAFE_DRIVERS


def test_captured_tree_never_asks_the_kernel(guest):
    v = group_viability(guest, guest.group("3"))
    assert v.source == "sysfs" and "captured tree" in v.note


# ---- in use --------------------------------------------------------------------------

def test_in_use_on_the_guest(guest):
    kinds = {d.bdf: [(u.kind, u.what) for u in usage_of(guest, d)] for d in guest.devices()}
    assert kinds["0000:00:04.0"] == [("mounted", "/dev/nvme0n1")]
    assert kinds["0000:00:06.0"] == [("network", "eth1")]
    assert kinds["0000:00:07.0"] == [("boot-vga", "0000:00:07.0")]
    # e1000e's eth0 is down; the root port above it is not charged with its interface
    assert kinds["0000:01:00.0"] == [] and kinds["0000:00:05.0"] == []
    assert kinds["0000:00:03.0"] == []


def test_root_filesystem_and_configured_nic_on_the_virtio_host():
    h = Host(VIRTIO)
    u2 = usage_of(h, h.device("00:02.0"))
    assert [(u.kind, u.what) for u in u2] == [("rootfs", "/dev/vda")]
    assert "root filesystem" in u2[0].detail
    u3 = usage_of(h, h.device("00:03.0"))
    assert u3[0].kind == "network" and "192.0.2.0/24" in u3[0].detail and "fd00::2/64" in u3[0].detail


def test_interface_up_without_addresses_is_free(tree):
    # e1000's interface stays up, its addresses go: only link-local left, no route
    open(os.path.join(tree, "proc/net/route"), "w").write("Iface\tDestination\n")
    h = Host(tree)
    assert usage_of(h, h.device("00:06.0")) == []


def test_mount_through_a_holder_and_swap(tree):
    """nvme0n1 -> dm-0 (holder) mounted, and nvme0n1 as swap."""
    h = Host(tree)
    nvme_blk = h.sysfs.real("sys/class/block/nvme0n1")
    dm = "sys/devices/virtual/block/dm-0"
    os.makedirs(os.path.join(tree, dm, "holders"))
    open(os.path.join(tree, dm, "dev"), "w").write("254:0\n")
    os.symlink(os.path.relpath(os.path.join(tree, dm), os.path.join(tree, "sys/class/block")),
               os.path.join(tree, "sys/class/block/dm-0"))
    os.makedirs(os.path.join(tree, nvme_blk, "holders"), exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(tree, dm), os.path.join(tree, nvme_blk, "holders")),
               os.path.join(tree, nvme_blk, "holders", "dm-0"))
    with open(os.path.join(tree, "proc/self/mountinfo"), "w") as f:
        f.write("31 1 0:26 / / rw - overlay overlay rw\n"
                "41 31 254:0 / /srv rw,relatime - ext4 /dev/mapper/vg-srv rw\n")
    with open(os.path.join(tree, "proc/swaps"), "w") as f:
        f.write("Filename\tType\tSize\tUsed\tPriority\n/dev/nvme0n1\tpartition\t1024\t0\t-2\n")
    got = [(u.kind, u.what) for u in usage_of(h, h.device("00:04.0"))]
    assert got == [("mounted", "/dev/dm-0"), ("swap", "/dev/nvme0n1")]


def test_holder_loop_is_detected_not_followed_forever(tree):
    h = Host(tree)
    nvme_blk = h.sysfs.real("sys/class/block/nvme0n1")
    os.makedirs(os.path.join(tree, nvme_blk, "holders"), exist_ok=True)
    # a holder that names the disk itself: the walk must end
    os.symlink("..", os.path.join(tree, nvme_blk, "holders", "nvme0n1"))
    got = usage_of(h, h.device("00:04.0"))
    assert [u.kind for u in got] == ["mounted"]
