"""Capture: through the Device API (here over a replayed device) and from sysfs."""

from __future__ import annotations

import os
import struct

import pytest

from vfio import uapi
from vfio.record import format as F
from vfio.record.capture import capture_device, capture_sysfs
from vfio.record.cli import main as cli_main
from vfio.record.replay import open_replay

from tests.paths import REPO as ROOT


def strip(rec: F.DeviceRecord) -> list:
    """Records other than NOTE (whose text has a timestamp), BAR data dropped."""
    out = []
    for r in rec.records:
        if type(r) is F.Note:
            continue
        if type(r) is F.Region:
            kids = [c for c in r.children if type(c) is not F.RegionData or r.is_config_space
                    or r.flags & F.REGION_ROM]
            r = F.Region(r.index, r.flags, r.offset, r.size, r.addr, kids)
        out.append(r)
    return out


@pytest.mark.parametrize("name", ["edu", "nvme", "e1000e"])
def test_capture_of_a_replay_reproduces_the_record(name, tmp_path):
    path = os.path.join(ROOT, "records", f"{name}.vfiorec")
    orig = F.load(path)
    with open_replay(path, name=orig.pci_info.bdf) as dev:
        again = capture_device(dev, sysfs=str(tmp_path))       # no sysfs here: no physical addresses
    for r in orig.records:
        if type(r) is F.Region:
            r.flags &= ~F.REGION_PHYS
            r.addr = 0
    assert strip(again) == strip(orig)
    assert "through VFIO" in again.notes[0]


def test_capture_reads_bar_registers_dword_wise(tmp_path):
    path = os.path.join(ROOT, "records", "edu.vfiorec")
    with open_replay(path, name="0000:00:03.0") as dev:
        rec = capture_device(dev, bar_bytes=6, sysfs=str(tmp_path))
    data = rec.regions[0].data
    assert len(data) == 1 and len(data[0].data) == 6
    assert data[0].data[:4] == struct.pack("<I", 0x010000ED)


def fake_sysfs(tmp_path, cfg: bytes, resources: list, reset=True) -> str:
    d = tmp_path / "devices" / "0000:00:05.0"
    d.mkdir(parents=True)
    (d / "config").write_bytes(cfg)
    lines = [f"0x{s:016x} 0x{e:016x} 0x{f:016x}" for s, e, f in resources]
    (d / "resource").write_text("\n".join(lines) + "\n")
    if reset:
        (d / "reset").write_text("")
    return str(tmp_path / "devices")


def test_capture_sysfs(tmp_path):
    cfg = bytearray(4096)
    struct.pack_into("<HHHH", cfg, 0, 0x8086, 0x10D3, 0x0007, 0x0010)
    struct.pack_into("<I", cfg, 0x10, 0xFEB40000)
    struct.pack_into("<I", cfg, 0x18, 0xC0A1)
    cfg[0x34] = 0xC8
    cfg[0x3D] = 1
    cfg[0xC8:0xCA] = bytes([0x05, 0xE0])                    # MSI, 64-bit, 4 vectors possible (QMASK 2)
    struct.pack_into("<H", cfg, 0xCA, 0x0084)
    cfg[0xE0:0xE2] = bytes([0x10, 0xA0])                    # PCIe
    cfg[0xA0:0xA2] = bytes([0x11, 0x00])                    # MSI-X, 5 vectors, table in BAR 3
    struct.pack_into("<HI", cfg, 0xA2, 4, 3)
    res = [(0xFEB40000, 0xFEB5FFFF, 0x40200), (0, 0, 0), (0xC0A0, 0xC0BF, 0x40101), (0xFEB84000, 0xFEB87FFF, 0x40200),
           (0, 0, 0), (0, 0, 0), (0, 0, 0)]
    sysfs = fake_sysfs(tmp_path, bytes(cfg), res)
    rec = capture_sysfs("00:05.0", sysfs=sysfs)
    assert F.parse(F.write(rec)) == rec
    r = rec.regions
    assert (r[0].size, r[0].addr, r[0].vfio_flags) == (0x20000, 0xFEB40000, 7)
    assert r[2].vfio_flags == 3 and r[2].bar.bar_type == F.BAR_PIO
    assert r[3].vfio_flags == 0xF and r[3].info.caps[:2] == struct.pack("<H", uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE)
    assert r[7].size == 4096 and r[7].data[0].data == bytes(cfg)
    irqs = {i: (x.flags, x.count) for i, x in rec.interrupts.items()}
    assert irqs == {0: (7, 1), 1: (9, 4), 2: (9, 5), 3: (9, 1), 4: (9, 1)}
    assert rec.device_info.vfio_flags == uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_RESET
    assert "missing" in rec.notes[0]
    with open_replay(rec) as dev:                           # the synthesized record replays
        assert dev.region(3).info.msix_mappable
        assert dev.config.read16(0) == 0x8086


def test_capture_sysfs_errors(tmp_path):
    with pytest.raises(OSError, match="no "):
        capture_sysfs("0000:00:09.0", sysfs=str(tmp_path))
    sysfs = fake_sysfs(tmp_path, bytes(16), [])
    with pytest.raises(ValueError, match="64-byte header"):
        capture_sysfs("0000:00:05.0", sysfs=sysfs)
    with pytest.raises(ValueError, match="not a PCI address"):
        capture_sysfs("5.0", sysfs=sysfs)


def test_cli_show_and_errors(tmp_path, capsys):
    assert cli_main(["--show", os.path.join(ROOT, "records", "nvme.vfiorec")]) == 0
    out = capsys.readouterr().out
    assert "PCI_INFO     0000:00:04.0" in out and "INTERRUPT 2  flags 0x1, count 65" in out
    bad = tmp_path / "bad.vfiorec"
    bad.write_bytes(b"VFIOREC\x00" + bytes(8))
    assert cli_main(["--show", str(bad)]) == 1
    assert "truncated file header" in capsys.readouterr().err
