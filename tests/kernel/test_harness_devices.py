"""The host-tools leg's extra devices are what other tests take them for.

- ``piix3-ide``: PIIX3's IDE function (8086:7010), a conventional PCI device on
  Linux's ata_piix driver;
- ``nvme-sriov``: a QEMU nvme controller with the SR-IOV capability (2 VFs),
  behind its own PCIe root port, on the native nvme driver.  Writing N to a PF's
  ``sriov_numvfs`` makes the kernel enable N VFs: they appear as PCI functions
  with ``physfn`` links to the PF and the PF gets ``virtfnK`` links;
- ``edu-mf``: two edu functions of one slot (0x10.0 and 0x10.1), multifunction
  and without ACS, so the kernel puts both in one IOMMU group; not bound to
  any driver unless the leg's --bind names it.

The harness tells same-ID devices apart through VFIO_HARNESS_BDFS.
"""

from __future__ import annotations

import os

import pytest

from tests.kernel.kernel_harness import harness_bdfs
from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

SYSFS_PCI = "/sys/bus/pci/devices"


def _one(name: str) -> str:
    bdfs = harness_bdfs(name)
    assert bdfs is not None and len(bdfs) == 1, f"harness device {name}: {bdfs} (VFIO_HARNESS_BDFS)"
    return bdfs[0]


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def _nvme_serial(bdf: str) -> str:
    ctrls = os.listdir(f"{SYSFS_PCI}/{bdf}/nvme")
    assert len(ctrls) == 1, ctrls
    return _read(f"{SYSFS_PCI}/{bdf}/nvme/{ctrls[0]}/serial")


def test_piix3_ide_on_ata_piix():
    dev = Host("/").device(_one("piix3-ide"))
    assert (dev.ids, dev.driver) == ("8086:7010", "ata_piix")
    assert dev.class_code >> 8 == 0x0101, f"class {dev.class_code:06x} is not an IDE controller"


def test_two_nvme_controllers_told_apart_by_serial(nvme_serial):
    pf, nvme = _one("nvme-sriov"), _one("nvme")
    assert pf != nvme
    assert _nvme_serial(nvme) == nvme_serial
    assert _nvme_serial(pf) == os.environ["VFIO_HARNESS_NVME_SRIOV_SERIAL"]


def test_nvme_sriov_makes_a_vf_while_the_pf_is_on_nvme():
    pf = _one("nvme-sriov")
    host = Host("/")
    assert host.device(pf).driver == "nvme"
    assert _read(f"{SYSFS_PCI}/{pf}/sriov_totalvfs") == "2"
    assert _read(f"{SYSFS_PCI}/{pf}/sriov_numvfs") == "0"
    try:
        with open(f"{SYSFS_PCI}/{pf}/sriov_numvfs", "w") as f:
            f.write("1")
        vf = os.path.basename(os.path.realpath(f"{SYSFS_PCI}/{pf}/virtfn0"))
        assert os.path.basename(os.path.realpath(f"{SYSFS_PCI}/{vf}/physfn")) == pf
        assert host.device(vf).ids == "1b36:0010"
        assert vf.rsplit(".", 1)[0] == pf.rsplit(".", 1)[0] and vf != pf, (pf, vf)   # offset 1, stride 1
        assert host.device(pf).driver == "nvme", "enabling a VF took the PF off nvme"
    finally:
        with open(f"{SYSFS_PCI}/{pf}/sriov_numvfs", "w") as f:
            f.write("0")
    assert not os.path.exists(f"{SYSFS_PCI}/{pf}/virtfn0")


def test_edu_mf_functions_share_one_group():
    bdfs = harness_bdfs("edu-mf")
    assert bdfs is not None and len(bdfs) == 2, bdfs
    host = Host("/")
    devs = [host.device(b) for b in sorted(bdfs)]
    assert [d.bdf.rsplit(".", 1)[1] for d in devs] == ["0", "1"]
    assert devs[0].bdf.rsplit(".", 1)[0] == devs[1].bdf.rsplit(".", 1)[0]
    assert all(d.ids == "1234:11e8" for d in devs)
    group = devs[0].iommu_group
    assert group is not None and devs[1].iommu_group == group
    assert sorted(os.listdir(f"/sys/kernel/iommu_groups/{group}/devices")) == sorted(bdfs)


def test_edu_mf_not_bound_unless_listed():
    listed = "edu-mf" in os.environ.get("VFIO_HARNESS_BIND", "").split(",")
    for bdf in harness_bdfs("edu-mf") or []:
        dev = Host("/").device(bdf)
        assert (dev.driver == "vfio-pci") == listed, (bdf, dev.driver, listed)
