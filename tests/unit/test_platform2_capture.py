"""``vfio-capture NAME``: a device-tree device captured by its platform/AMBA name,
with the DTPATH/DTINDEX records the capture API writes.

The tree is test_platform_host's (a virtio-mmio node, a PL031); opening through
VFIO is replaced by a replay of the shipped arm64 virtio-mmio capture, whose
device carries the device-tree origins a live vfio-platform device has (the
live path runs in tests/kernel/test_platform2_assign.py).
"""

from __future__ import annotations

import pytest

from vfio import platform as P
from vfio.record import capture
from vfio.record import format as F
from vfio.record.cli import main as capture_main
from vfio.record.replay import open_replay
from tests.paths import RECORDS
from tests.unit.test_platform_host import VM, tree  # noqa: F401  (tree: the fixture)

NODE = "/virtio_mmio@a000000"


@pytest.fixture
def live(tree, monkeypatch):
    """vfio-capture's live system is the fixture tree."""
    monkeypatch.setattr(capture, "SYSFS_PCI", f"{tree}/sys/bus/pci/devices")
    return tree


def _exit(argv) -> int:
    try:
        return capture_main(argv)
    except SystemExit as e:          # argparse's usage errors
        return e.code


def test_a_platform_name_is_captured_with_its_device_tree_records(live, monkeypatch, tmp_path, capsys):
    opened = []

    def fake_open(name, interface="auto", container=None, sysfs="/"):
        opened.append((name, sysfs.root))
        return open_replay(f"{RECORDS}/virtio-mmio-arm64.vfiorec")
    monkeypatch.setattr(P, "open_platform_device", fake_open)
    out = tmp_path / "vm.vfiorec"
    assert capture_main([VM, "-o", str(out)]) == 0
    assert opened == [(VM, live)]
    assert f"{out}: " in capsys.readouterr().out
    rec = F.load(str(out))
    reg, irq = rec.regions[0], rec.interrupts[0]
    assert [c.path for c in reg.children if type(c) is F.DtPath] == [NODE]
    assert [(c.prop_type, c.prop_index) for c in reg.children if type(c) is F.DtIndex] == [(F.DT_PROP_REG, 0)]
    assert [c.path for c in irq.children if type(c) is F.DtPath] == [NODE]
    assert [(c.prop_type, c.prop_index) for c in irq.children if type(c) is F.DtIndex] == \
        [(F.DT_PROP_INTERRUPTS, 0)]


def test_a_name_that_is_neither_is_a_usage_error(live, tmp_path, capsys):
    assert _exit(["nope.dev", "-o", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "not a PCI address" in err and "nor is 'nope.dev' a platform or AMBA device" in err
    assert "/sys/bus/platform/devices/nope.dev" in err
    assert not (tmp_path / "x").exists()


def test_sysfs_capture_of_a_platform_device_is_refused(live, tmp_path, capsys):
    assert _exit([VM, "-o", str(tmp_path / "x"), "--sysfs"]) == 2
    assert "capture PCI devices only" in capsys.readouterr().err


def test_an_unbound_platform_device_fails_like_an_unbound_pci_one(live, tmp_path, capsys):
    # no IOMMU group (not bound to vfio-platform): the kernel-side error, exit 1, no file
    assert _exit([VM, "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vfio-capture: ") and "IOMMU group of a000000.virtio_mmio" in err
    assert not (tmp_path / "x").exists()
