"""Capture reads sysfs through the one door: a device of a captured tree
(fixtures/sysfs, tools/capture-sysfs) is captured as on the live system."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import RECORDS, TOOLS
from vfio import uapi
from vfio.host.sysfs import Host
from vfio.record import format as F
from vfio.record.capture import capture_device, capture_sysfs
from vfio.record.cli import main as cli_main
from vfio.record.replay import open_replay
from vfio.sysfs import PCI_DEVICES, SysfsTree

NVME = "0000:00:04.0"         # nvme on its own driver in the q35 guest tree


def check_matches_host(rec: F.DeviceRecord, root: str, bdf: str) -> None:
    host = Host(root)
    res = host.resources(bdf)
    cfg = host.config(bdf)
    assert rec.pci_info.bdf == bdf
    for i in range(uapi.VFIO_PCI_ROM_REGION_INDEX + 1):
        r = rec.regions[i]
        size = res[i].end - res[i].start + 1 if res[i].end else 0
        assert (r.size, r.addr) == (size, res[i].start if size else 0), i
    assert rec.regions[uapi.VFIO_PCI_CONFIG_REGION_INDEX].data[0].data == cfg
    assert rec.regions[uapi.VFIO_PCI_CONFIG_REGION_INDEX].size == os.path.getsize(
        os.path.join(root, PCI_DEVICES, bdf, "config"))


def test_capture_of_a_device_from_a_fixture_tree(tree):
    rec = capture_sysfs("00:04.0", sysfs=SysfsTree(tree))
    check_matches_host(rec, tree, NVME)
    assert rec.regions[0].size == 0x4000 and rec.interrupts[uapi.VFIO_PCI_MSIX_IRQ_INDEX].count == 65
    # the tree has no reset attribute (write-only, not captured then): no RESET flag
    assert not rec.device_info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_RESET
    open(os.path.join(tree, PCI_DEVICES, NVME, "reset"), "w").close()
    again = capture_sysfs(NVME, sysfs=SysfsTree(tree))
    assert again.device_info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_RESET
    with open_replay(F.parse(F.write(again))) as dev:
        assert dev.config.read16(0) == 0x1B36


def test_capture_from_a_tree_tools_capture_sysfs_wrote(tree, tmp_path):
    # a device on vfio-pci with a cdev, and the reset attribute: what a live 6.12 host shows
    edu = os.path.join(tree, PCI_DEVICES, "0000:00:03.0")
    os.makedirs(os.path.join(edu, "vfio-dev", "vfio0"))
    with open(os.path.join(edu, "vfio-dev", "vfio0", "dev"), "w") as f:
        f.write("511:0\n")
    open(os.path.join(edu, "reset"), "w").close()
    out = tmp_path / "captured"
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "capture-sysfs"), str(out), "--root", tree],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    t = SysfsTree(str(out))
    from vfio.group import iommu_group_of
    from vfio.iommufd import cdev_path_of
    assert iommu_group_of("0000:00:03.0", t) == "3"
    assert cdev_path_of("0000:00:03.0", t) == os.path.join(str(out), "dev", "vfio", "devices", "vfio0")
    rec = capture_sysfs("0000:00:03.0", sysfs=t)
    check_matches_host(rec, str(out), "0000:00:03.0")
    assert rec.device_info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_RESET
    assert capture_sysfs(NVME, sysfs=t).regions == capture_sysfs(NVME, sysfs=SysfsTree(tree)).regions


def test_capture_errors_name_the_path_in_the_tree(tree):
    t = SysfsTree(tree)
    with pytest.raises(OSError, match=r"no /sys/bus/pci/devices/0000:00:09\.0"):
        capture_sysfs("00:09.0", sysfs=t)
    res = os.path.join(tree, PCI_DEVICES, NVME, "resource")
    with open(res, "w") as f:
        f.write("0xfebd0000 nonsense\n")
    with pytest.raises(ValueError, match=r"/sys/bus/pci/devices/0000:00:04\.0/resource: line 1"):
        capture_sysfs(NVME, sysfs=t)
    os.unlink(res)
    with pytest.raises(OSError, match=r"reading /sys/bus/pci/devices/0000:00:04\.0/resource") as ei:
        capture_sysfs(NVME, sysfs=t)
    assert ei.value.errno == 2


def test_capture_device_takes_addresses_from_the_tree(tree):
    rec = F.load(os.path.join(RECORDS, "nvme.vfiorec"))
    with open_replay(rec, name=NVME) as dev:
        got = capture_device(dev, sysfs=SysfsTree(tree))
    res = Host(tree).resources(NVME)
    assert got.regions[0].addr == res[0].start and got.regions[0].flags & F.REGION_PHYS


def test_cli_capture_from_a_tree(tree, tmp_path, capsys):
    out = tmp_path / "nvme.vfiorec"
    assert cli_main([NVME, "-o", str(out), "--sysfs", "--root", tree]) == 0
    check_matches_host(F.load(out), tree, NVME)
    assert cli_main(["00:09.0", "-o", str(out), "--sysfs", "--root", tree]) == 2
    assert "no such PCI device 0000:00:09.0 (no /sys/bus/pci/devices/0000:00:09.0)" in capsys.readouterr().err
    assert cli_main([NVME, "-o", str(out), "--sysfs", "--root", str(tmp_path / "none")]) == 2
    assert "no such directory" in capsys.readouterr().err
    with pytest.raises(SystemExit) as ei:
        cli_main([NVME, "-o", str(out), "--root", tree])       # through VFIO: this system only
    assert ei.value.code == 2
    assert "--root goes with --sysfs" in capsys.readouterr().err


def test_the_test_oracle_is_not_in_the_package(capsys):
    import vfio.record.capture as capture
    assert not hasattr(capture, "answers")
    with pytest.raises(SystemExit) as ei:
        cli_main([NVME, "-o", "x.vfiorec", "--answers", "x.json"])
    assert ei.value.code == 2 and "--answers" in capsys.readouterr().err
