"""Config space that stops short: say what is missing, at which offset, and never decode past the end.

A function has 256 (PCI) or 4096 (PCI Express) bytes of config space; sysfs
gives a non-root reader the 64-byte header.  Any other length is a cut file or
read, and the decode must say so (lspci says ``<access denied>`` /
``<chain broken>``): the length, what could not be decoded, each capability
whose body is cut marked truncated at its own offset.  vfio-inspect shows that
in place and exits 3 ("shown, but some part could not be read").
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest

from vfio.host import inspect
from vfio.pci import regs as R
from vfio.pci.config import ConfigSpace
from tests.paths import GUEST_TREE, KERNEL_VIEW

PF = (Path(KERNEL_VIEW) / "nvme-sriov-pf.bin").read_bytes()   # PCIe, ARI + SR-IOV
GUEST = Path(GUEST_TREE)
NVME = "0000:00:04.0"            # nvme in the captured guest tree: MSI-X 0x40, PCIe 0x80, PM 0x60


def cut(n: int) -> ConfigSpace:
    return ConfigSpace(PF[:n], allow_short=True, source="pf.bin")


@pytest.mark.parametrize("n", [257, 300, 0x124, 4095])
def test_extended_list_cut_short_is_reported_not_silently_empty(n):
    d = cut(n).to_dict(strict=False)
    assert d["truncated"] is True and d["header_only"] is False
    assert d["incomplete"], "a cut config space must say what is missing"
    first = d["incomplete"][0]
    assert first["offset"] == n and f"{n} bytes" in first["message"] and "cut short" in first["message"]
    ext = d["extended_capabilities"]
    if n < 0x104:               # not even the first header
        assert ext == []
        assert any(c["offset"] == 0x100 for c in d["incomplete"][1:])
    elif n < 0x120 + 0x40:      # ARI whole, SR-IOV (0x120, 64 bytes) cut
        assert [c["offset"] for c in ext] == [0x100, 0x120]
        assert "truncated" not in ext[0]
        assert ext[1]["truncated"].startswith("extended capability 0x10 at 0x120")
        assert ext[1]["offset"] == 0x120 and ext[1]["raw"] == PF[0x120:n].hex()
    for item in d["incomplete"]:
        assert item["offset"] <= n


def test_a_complete_pcie_space_is_not_incomplete():
    d = ConfigSpace(PF).to_dict()
    assert d["truncated"] is False and d["incomplete"] == []
    assert [c["offset"] for c in d["extended_capabilities"]] == [0x100, 0x120]


@pytest.mark.parametrize("n", [65, 0x44, 100, 0x82, 200, 255])
def test_standard_list_cut_short_is_decoded_as_far_as_it_goes(n):
    cs = cut(n)
    d = cs.to_dict(strict=False)
    assert d["header_only"] is False and d["truncated"] is True
    assert d["extended_capabilities"] is None          # cut before 0x100: not read
    caps = d["capabilities"]
    assert isinstance(caps, list), caps               # not an error for the whole list
    for c in caps:
        assert c["offset"] < n
        if "truncated" in c:
            assert f"at {c['offset']:#05x}" in c["truncated"] and f"data ends at {n:#05x}" in c["truncated"]
    assert all(i["offset"] <= n for i in d["incomplete"])
    assert d["incomplete"][0]["message"].startswith(f"{n} bytes: config space is cut short")


def test_header_only_read_is_still_the_non_root_view():
    cs = ConfigSpace(PF[:64], allow_short=True)
    d = cs.to_dict()
    assert d["header_only"] is True and d["truncated"] is False and d["incomplete"] == []
    assert d["capabilities"] is None and d["extended_capabilities"] is None


def test_capability_running_off_the_end_of_config_space_is_truncated_at_its_offset():
    """An AER capability at 0xffc: reported at 0xffc as running past 0x1000, never at 0x1014."""
    data = bytearray(PF)
    # chain: ARI at 0x100 -> SR-IOV at 0x120 -> AER at 0xffc
    sriov_hdr = int.from_bytes(data[0x120:0x124], "little")
    data[0x120:0x124] = ((sriov_hdr & 0x000FFFFF) | (0xFFC << 20)).to_bytes(4, "little")
    data[0xFFC:0x1000] = (R.EXT_CAP_ID_ERR | (2 << 16)).to_bytes(4, "little")
    cs = ConfigSpace(bytes(data), source="aer.bin")
    aer = cs.extended_capabilities[-1]
    assert aer.offset == 0xFFC and aer.id == R.EXT_CAP_ID_ERR
    assert aer.truncated and "at 0xffc" in aer.truncated and "end of config space (0x1000)" in aer.truncated
    assert cs.incomplete == [(0xFFC, aer.truncated)]
    d = cs.to_dict(strict=False)
    assert not isinstance(d["extended_capabilities"], dict)      # the rest of the list still shows
    text = json.dumps(d["extended_capabilities"]) + json.dumps(d["incomplete"])
    assert "0x1014" not in text and "4116" not in text


# ---- vfio-inspect ------------------------------------------------------------------------------

def tree_with_config(tmp_path, data: bytes) -> str:
    root = tmp_path / "root"
    shutil.copytree(GUEST, root, symlinks=True)
    (root / "sys/devices/pci0000:00" / NVME / "config").write_bytes(data)
    return str(root)


def run(*argv) -> tuple[int, str]:
    out = io.StringIO()
    return inspect.main(list(argv), out=out), out.getvalue()


@pytest.mark.parametrize("n", [300, 4000])
def test_inspect_says_which_file_how_long_and_what_is_missing_exit_3(tmp_path, n):
    full = (GUEST / "sys/devices/pci0000:00" / NVME / "config").read_bytes()
    root = tree_with_config(tmp_path, full[:n])
    rc, text = run("--root", root, NVME)
    assert rc == inspect.EXIT_PARTIAL
    path = f"/sys/bus/pci/devices/{NVME}/config"
    assert f"config space: {n} bytes of {path} (INCOMPLETE: cut short, see below)" in text
    assert f"INCOMPLETE at {n:#05x}: {n} bytes: config space is cut short" in text
    rc, doc = run("--root", root, "--json", NVME)
    cfg = json.loads(doc)["config"]
    assert rc == inspect.EXIT_PARTIAL and cfg["truncated"] is True and cfg["source"] == path


def test_inspect_short_file_read_as_root_is_not_blamed_on_permissions(tmp_path, monkeypatch):
    full = (GUEST / "sys/devices/pci0000:00" / NVME / "config").read_bytes()
    root = tree_with_config(tmp_path, full[:200])
    monkeypatch.setattr(inspect.os, "geteuid", lambda: 0)
    rc, text = run("--root", root, NVME)
    assert "run as root" not in text                 # before: "header only: run as root for capabilities"
    assert rc == inspect.EXIT_PARTIAL
    assert "[0x040] MSI-X" in text and "INCOMPLETE" in text


def test_inspect_header_only_wording_depends_on_who_reads(tmp_path, monkeypatch):
    full = (GUEST / "sys/devices/pci0000:00" / NVME / "config").read_bytes()
    root = tree_with_config(tmp_path, full[:64])
    monkeypatch.setattr(inspect.os, "geteuid", lambda: 1000)
    rc, text = run("--root", root, NVME)
    assert rc == inspect.EXIT_OK and "(header only: run as root for capabilities)" in text
    monkeypatch.setattr(inspect.os, "geteuid", lambda: 0)
    rc, text = run("--root", root, NVME)
    assert rc == inspect.EXIT_PARTIAL and "INCOMPLETE: only the 64-byte header" in text
