"""PciIds: the pci.ids parser and lookups."""

from __future__ import annotations

import pytest

from vfio.pci.ids import PciIds, PciIdsError

SAMPLE = """\
# comment line
1af4  Red Hat, Inc.
\t1041  Virtio 1.0 network device
\t\t1af4 1100  QEMU Virtual Machine
\t1042  Virtio 1.0 block device
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection

# classes
C 01  Mass storage controller
\t06  SATA controller
\t\t01  AHCI 1.0
C 02  Network controller
\t00  Ethernet controller
"""


def test_lookups(tmp_path):
    p = tmp_path / "pci.ids"
    p.write_text(SAMPLE)
    ids = PciIds(str(p))
    assert len(ids) == 2
    assert ids.vendor_name(0x1AF4) == "Red Hat, Inc."
    assert ids.device_name(0x1AF4, 0x1042) == "Virtio 1.0 block device"
    assert ids.device_name(0x8086, 0x10D3) == "82574L Gigabit Network Connection"
    assert ids.subsystem_name(0x1AF4, 0x1041, 0x1AF4, 0x1100) == "QEMU Virtual Machine"
    assert ids.class_name(0x010601) == "SATA controller" and ids.prog_if_name(0x010601) == "AHCI 1.0"
    assert ids.class_name(0x020000) == "Ethernet controller"
    assert ids.class_name(0x0105FF) == "Mass storage controller"    # unknown subclass: the base class
    # unknown IDs are None, never a made-up name
    assert ids.vendor_name(0x1234) is None and ids.device_name(0x1AF4, 0x9999) is None
    assert ids.subsystem_name(0x1AF4, 0x1042, 0x1AF4, 0x1100) is None and ids.class_name(0x990000) is None


def test_malformed_line_names_path_and_line(tmp_path):
    p = tmp_path / "pci.ids"
    p.write_text("1af4  Red Hat, Inc.\n\tzzzz  bad device\n")
    ids = PciIds(str(p))                # parsed lazily: the vendor's block on first lookup
    with pytest.raises(PciIdsError, match=r"pci.ids:2"):
        ids.device_name(0x1af4, 0x1000)


def test_empty_database():
    ids = PciIds()
    assert ids.path is None and ids.vendor_name(0x8086) is None and ids.class_name(0x020000) is None


def test_system_database():
    ids = PciIds.default()
    assert ids.path is not None, "pci.ids is installed with pciutils"
    assert ids.vendor_name(0x8086) == "Intel Corporation"
    assert ids.device_name(0x1B36, 0x0010) == "QEMU NVM Express Controller"
    assert PciIds.default() is ids    # parsed once
