"""BARs and ROM where the register does not carry them: the kernel's view (sysfs ``resource``).

The fixtures in fixtures/config/kernel-view/ were taken in a harness guest
(QEMU 7.2 q35, Debian 6.12): a legacy-mode ``piix3-ide`` (BAR0-3 read 0, the
kernel puts the fixed ISA ports 0x1f0/0x3f6/0x170/0x376 in its resources) and
an SR-IOV nvme PF with one VF enabled (a VF's BAR registers read 0 by the
SR-IOV spec; the kernel computes them from the PF's SR-IOV capability).  Each
comes with its ``config``, its ``resource`` file and what ``lspci -vvv -s BDF``
printed in that guest, which is the oracle here.
"""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest

from vfio.host import inspect
from vfio.host.sysfs import Host, HostError
from vfio.pci.config import BarOrigin, ConfigSpace, KernelResource

from tests import lspci_text
from tests.paths import GUEST_TREE, KERNEL_VIEW

KV = Path(KERNEL_VIEW)
IDS = {"piix3-ide": ("0x8086", "0x7010", "0x010180"), "nvme-sriov-pf": ("0x1b36", "0x0010", "0x010802"),
       "nvme-sriov-vf": ("0x1b36", "0x0010", "0x010802")}
BDF = {"piix3-ide": "0000:00:06.0", "nvme-sriov-pf": "0000:01:00.0", "nvme-sriov-vf": "0000:01:00.1"}


def resources(name: str) -> list[KernelResource]:
    out = []
    for n, line in enumerate((KV / f"{name}.resource").read_text().splitlines()):
        start, end, flags = (int(x, 16) for x in line.split())
        out.append(KernelResource(n, start, end, flags))
    return out


def lspci_regions(name: str) -> dict:
    """Region N and Expansion ROM lines of the guest's lspci -vvv (the device's own, not the SR-IOV cap's)."""
    return lspci_text.regions((KV / f"{name}.lspci").read_text())


def tree(tmp_path, *names) -> str:
    """A minimal captured sysfs tree holding the fixture devices."""
    for name in names:
        d = tmp_path / "sys/bus/pci/devices" / BDF[name]
        d.mkdir(parents=True)
        v, dev, cls = IDS[name]
        for f, text in (("vendor", v), ("device", dev), ("class", cls), ("revision", "0x02")):
            (d / f).write_text(text + "\n")
        (d / "config").write_bytes((KV / f"{name}.bin").read_bytes())
        (d / "resource").write_text((KV / f"{name}.resource").read_text())
    return str(tmp_path)


def inspect_json(root: str, bdf: str) -> dict:
    out = io.StringIO()
    rc = inspect.main(["--root", root, "--json", bdf], out=out)
    assert rc == inspect.EXIT_OK, out.getvalue()
    return json.loads(out.getvalue())


def inspect_text(root: str, bdf: str) -> str:
    out = io.StringIO()
    assert inspect.main(["--root", root, bdf], out=out) == inspect.EXIT_OK
    return out.getvalue()


# ---- SR-IOV VF ------------------------------------------------------------------------------

def test_vf_bar_is_the_kernels_64bit_bar_marked_virtual(tmp_path):
    ls = lspci_regions("nvme-sriov-vf")["regions"]
    assert ls == {0: {"io": False, "address": 0xFE404000, "width": "64", "prefetchable": False,
                      "virtual": True, "disabled": False, "size": "16K"}}
    cfg = inspect_json(tree(tmp_path, "nvme-sriov-vf"), BDF["nvme-sriov-vf"])["config"]
    (bar,) = cfg["bars"]
    # before: {"kind": "mem32", "address": 0, "size": 0x4000} -- type and address from a register reading 0
    assert (bar["index"], bar["kind"], bar["address"], bar["size"]) == (0, "mem64", 0xFE404000, 0x4000)
    assert bar["prefetchable"] is False and bar["raw"] == 0
    assert bar["virtual"] is True and bar["origin"] == "sr-iov" and bar["disabled"] is False
    text = inspect_text(str(tmp_path), BDF["nvme-sriov-vf"])
    assert "BAR0: Memory at 0xfe404000 (64-bit, non-prefetchable) [virtual] [size=16K]" in text


def test_vf_config_alone_has_no_bar_to_show():
    """Config bytes without sysfs: a VF's BAR registers read 0, so there is nothing to decode
    (as `lspci -F` shows nothing) -- never an invented mem32 at 0."""
    cs = ConfigSpace((KV / "nvme-sriov-vf.bin").read_bytes())
    assert cs.is_virtual_function and cs.bars == []


def test_pf_sriov_capability_decodes_the_vf_bars_as_lspci():
    cs = ConfigSpace((KV / "nvme-sriov-pf.bin").read_bytes(), resources=resources("nvme-sriov-pf"))
    sriov = cs.find_ext(0x10)
    lines = (KV / "nvme-sriov-pf.lspci").read_text().splitlines()
    i = next(n for n, ln in enumerate(lines) if "(SR-IOV)" in ln)
    vf_regions = [re.match(r"\s+Region (\d): Memory at ([0-9a-f]+) \((64|32)-bit, (non-)?prefetchable\)", ln)
                  for ln in lines[i:] if "Region" in ln]
    assert len(vf_regions) == 1
    want = vf_regions[0]
    got = sriov.vf_bar_regions
    assert [(r["index"], r["address"], r["kind"], r["prefetchable"]) for r in got] == [
        (int(want.group(1)), int(want.group(2), 16), "mem" + want.group(3), want.group(4) is None)]
    # the VF's own BAR0 sits at the PF's VF BAR0 + VF number (0) x the per-VF size
    vf = ConfigSpace((KV / "nvme-sriov-vf.bin").read_bytes(), resources=resources("nvme-sriov-vf"))
    assert vf.bar(0).address == got[0]["address"]
    # the PF's own BAR is a plain register BAR
    assert cs.bar(0).origin is BarOrigin.REGISTER and not cs.bar(0).virtual


# ---- legacy-mode IDE ------------------------------------------------------------------------

def test_legacy_ide_ports_are_io_from_the_kernel_including_the_one_byte_ones(tmp_path):
    ls = lspci_regions("piix3-ide")["regions"]
    cfg = inspect_json(tree(tmp_path, "piix3-ide"), BDF["piix3-ide"])["config"]
    bars = {b["index"]: b for b in cfg["bars"]}
    # before: BAR0/BAR2 "mem32 at 0x0", BAR1/BAR3 missing
    assert sorted(bars) == sorted(ls) == [0, 1, 2, 3, 4]
    for i, want in ls.items():
        b = bars[i]
        assert b["kind"] == "io" and want["io"], i
        # lspci masks the two low bits of an I/O address (0x3f6 -> 0x3f4); the kernel's is exact
        assert b["address"] & ~3 == want["address"], i
    assert [bars[i]["address"] for i in range(4)] == [0x1F0, 0x3F6, 0x170, 0x376]
    # lspci's library leaves a 1-byte resource without a size (it computes one only when end > start)
    assert [bars[i]["size"] for i in range(5)] == [8, 1, 8, 1, 16]
    assert all(bars[i]["virtual"] and bars[i]["fixed"] and bars[i]["origin"] == "kernel" for i in range(4))
    assert bars[4]["virtual"] is False and bars[4]["origin"] == "register" and bars[4]["address"] == 0xC100
    text = inspect_text(str(tmp_path), BDF["piix3-ide"])
    assert "BAR0: I/O ports at 0x1f0 [virtual] [size=8]" in text
    assert "BAR1: I/O ports at 0x3f6 [virtual] [size=1]" in text
    assert "BAR4: I/O ports at 0xc100 [size=16]" in text


def test_ide_config_alone_decodes_as_before():
    """No sysfs: only the register BAR4 (the legacy ports are not in config space at all)."""
    cs = ConfigSpace((KV / "piix3-ide.bin").read_bytes())
    assert [(b.index, b.kind, b.address, b.size, b.origin) for b in cs.bars] == [
        (4, "io", 0xC100, None, BarOrigin.REGISTER)]


# ---- ROM ------------------------------------------------------------------------------------

def test_rom_size_comes_from_resource_line_6():
    guest = Path(GUEST_TREE)
    out = io.StringIO()
    assert inspect.main(["--root", str(guest), "--json", "0000:00:06.0"], out=out) == 0
    rom = json.loads(out.getvalue())["config"]["rom"]
    # e1000: line 6 is feb00000-feb3ffff; before, the size was never read (null)
    assert rom["address"] == 0xFEB00000 and rom["size"] == 0x40000 and rom["enabled"] is False
    out = io.StringIO()
    inspect.main(["--root", str(guest), "0000:00:06.0"], out=out)
    assert "Expansion ROM at 0xfeb00000 [disabled] [size=256K]" in out.getvalue()


def test_rom_reported_by_the_kernel_only_is_virtual():
    data = bytearray((KV / "nvme-sriov-pf.bin").read_bytes())
    data[0x30:0x34] = bytes(4)
    res = [KernelResource(6, 0xC0000, 0xDFFFF, 0x212)]
    rom = ConfigSpace(bytes(data), resources=res).rom
    assert (rom.address, rom.size, rom.virtual, rom.enabled) == (0xC0000, 0x20000, True, False)


# ---- the resource parser --------------------------------------------------------------------

def test_host_resources_parses_every_line_and_names_a_bad_one(tmp_path):
    root = tree(tmp_path, "nvme-sriov-pf")
    h = Host(root)
    res = h.resources(BDF["nvme-sriov-pf"])
    assert len(res) == 13
    assert (res[0].start, res[0].size, res[0].kind) == (0xFE400000, 0x4000, "mem64")
    assert (res[7].start, res[7].size) == (0xFE404000, 0x8000)    # the VFs' BAR0 span (2 VFs x 16K)
    assert not res[6].present
    p = tmp_path / "sys/bus/pci/devices" / BDF["nvme-sriov-pf"] / "resource"
    p.write_text(p.read_text().replace("0x0000000000140204", "0xzz", 1))
    with pytest.raises(HostError, match=r"/sys/bus/pci/devices/0000:01:00\.0/resource: line 1 "):
        h.resources(BDF["nvme-sriov-pf"])


def test_a_malformed_resource_file_is_shown_in_place_with_exit_3(tmp_path):
    root = tree(tmp_path, "piix3-ide")
    p = tmp_path / "sys/bus/pci/devices" / BDF["piix3-ide"] / "resource"
    p.write_text("garbage\n")
    out = io.StringIO()
    assert inspect.main(["--root", root, BDF["piix3-ide"]], out=out) == inspect.EXIT_PARTIAL
    assert "kernel resources: cannot read:" in out.getvalue() and "line 1" in out.getvalue()
    assert "BAR4: I/O ports at 0xc100" in out.getvalue()



def test_disabled_only_for_register_bars_whose_decode_is_off():
    data = bytearray((KV / "nvme-sriov-pf.bin").read_bytes())
    data[0x04] &= ~0x02                                    # Command.Memory off
    pf = ConfigSpace(bytes(data), resources=resources("nvme-sriov-pf"))
    assert pf.bar(0).disabled is True                      # lspci: "[disabled]"
    vf = ConfigSpace((KV / "nvme-sriov-vf.bin").read_bytes(), resources=resources("nvme-sriov-vf"))
    assert vf.command & 0x02 == 0 and vf.bar(0).disabled is False   # lspci: "[virtual]", never "[disabled]"
