"""vfio-inspect against the real kernel and lspci, in the guest.

* BARs whose register reads 0: a legacy-mode IDE controller (QEMU
  ``piix3-ide``: the kernel gives it the fixed ISA ports) and an SR-IOV VF
  (QEMU 7.2 ``nvme`` with ``sriov_max_vfs``; the PF on the native nvme driver
  enables one VF).  vfio-inspect must show type, address and size as the
  kernel has them and lspci prints them (``lspci -vvv -s BDF`` run here).
* A closed pipe and the absent VGA region / ERR IRQ, on the real vfio-pci.
* The no-IOMMU warning as one tool line (noiommu leg).

Devices are found by vendor:device and capability, never by address.  The
host-tools leg needs, besides its own devices (tools/README.md):

    -device piix3-ide
    -device pcie-root-port,id=sriov-rp,chassis=9,slot=9
    -device nvme-subsys,id=sriov-subsys
    -device nvme,serial=sriov-pf,subsys=sriov-subsys,bus=sriov-rp,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from vfio.host.sysfs import Host

from tests import lspci_text

DEVICES = "/sys/bus/pci/devices"
QEMU_HINT = ("the host-tools leg needs QEMU arguments -device piix3-ide -device pcie-root-port,id=sriov-rp,"
             "chassis=9,slot=9 -device nvme-subsys,id=sriov-subsys -device nvme,serial=sriov-pf,"
             "subsys=sriov-subsys,bus=sriov-rp,sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2")


def inspect_cli(*args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vfio.host.inspect", *args], capture_output=True, text=True,
                          timeout=300, **kw)


def inspect_json(bdf: str) -> dict:
    p = inspect_cli("--json", bdf)
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout)


def lspci_regions(bdf: str) -> tuple[dict, str]:
    text = subprocess.run(["lspci", "-vvv", "-s", bdf], capture_output=True, text=True, timeout=120,
                          check=True).stdout
    return lspci_text.regions(text)["regions"], text


def lspci_size(n: int) -> str:
    for suffix in ("", "K", "M", "G"):
        if n % 1024:
            return f"{n}{suffix}"
        n //= 1024
    return f"{n}T"


def find(vendor: int, device: int, pred=lambda d: True) -> list:
    return [d for d in Host("/").devices() if d.vendor == vendor and d.device == device and pred(d)]


@pytest.mark.kernel
@pytest.mark.native_drivers
def test_legacy_ide_bars_are_the_kernels_io_ports_as_lspci_shows():
    devs = find(0x8086, 0x7010)
    if not devs:
        pytest.fail(f"no piix3-ide (8086:7010) in this guest; {QEMU_HINT}", pytrace=False)
    bdf = devs[0].bdf
    with open(f"{DEVICES}/{bdf}/config", "rb") as f:
        cfg = f.read()
    assert cfg[0x10:0x20] == bytes(16), "legacy mode: BAR0-3 registers read 0"
    ls, text = lspci_regions(bdf)
    bars = {b["index"]: b for b in inspect_json(bdf)["config"]["bars"]}
    assert sorted(bars) == sorted(ls), (bars, text)
    for i, want in ls.items():
        b = bars[i]
        assert (b["kind"] == "io") == want["io"], (i, b, text)
        assert b["address"] & ~3 == want["address"], (i, b, text)        # lspci masks bits 1:0 of a port
        if want["size"]:
            assert lspci_size(b["size"]) == want["size"], (i, b, text)
        else:
            assert b["size"] == 1, (i, b, text)   # lspci leaves a 1-byte resource without a size
    assert [bars[i]["address"] for i in range(4)] == [0x1F0, 0x3F6, 0x170, 0x376]
    assert all(bars[i]["virtual"] and bars[i]["fixed"] for i in range(4))


@pytest.fixture
def sriov_vf():
    """One VF of the SR-IOV nvme, enabled for the test (autoprobe off: no driver on it)."""
    pfs = find(0x1B36, 0x0010, lambda d: os.path.exists(f"{DEVICES}/{d.bdf}/sriov_totalvfs"))
    if not pfs:
        pytest.fail(f"no SR-IOV nvme PF (1b36:0010 with sriov_totalvfs) in this guest; {QEMU_HINT}", pytrace=False)
    pf = pfs[0]
    if pf.driver != "nvme":
        pytest.fail(f"SR-IOV PF {pf.bdf} is on {pf.driver!r}, not the native nvme driver that enables VFs",
                    pytrace=False)
    base = f"{DEVICES}/{pf.bdf}"
    with open(f"{base}/sriov_drivers_autoprobe", "w") as f:
        f.write("0")
    with open(f"{base}/sriov_numvfs", "w") as f:
        f.write("1")
    try:
        for _ in range(100):
            if os.path.exists(f"{base}/virtfn0"):
                break
            time.sleep(0.1)
        yield pf.bdf, os.path.basename(os.readlink(f"{base}/virtfn0"))
    finally:
        with open(f"{base}/sriov_numvfs", "w") as f:
            f.write("0")


@pytest.mark.kernel
@pytest.mark.native_drivers
def test_sriov_vf_bar_is_the_kernels_as_lspci_shows(sriov_vf):
    pf, vf = sriov_vf
    with open(f"{DEVICES}/{vf}/config", "rb") as f:
        cfg = f.read()
    assert cfg[0x10:0x28] == bytes(24), "a VF's BAR registers read 0"
    ls, text = lspci_regions(vf)
    assert ls and all(r["virtual"] for r in ls.values()), text
    doc = inspect_json(vf)
    assert doc["physfn"] == pf
    bars = {b["index"]: b for b in doc["config"]["bars"]}
    assert sorted(bars) == sorted(ls), (bars, text)
    for i, want in ls.items():
        b = bars[i]
        assert not want["io"] and b["kind"] == f"mem{want['width']}", (i, b, text)
        assert (b["address"], b["prefetchable"]) == (want["address"], want["prefetchable"]), (i, b, text)
        assert lspci_size(b["size"]) == want["size"], (i, b, text)
        assert b["virtual"] is True and b["origin"] == "sr-iov", b
    # the VF's BAR0 is the PF's SR-IOV VF BAR0 for VF 0
    pf_cfg = inspect_json(pf)["config"]
    sriov = next(c for c in pf_cfg["extended_capabilities"] if c["id"] == 0x10)
    assert sriov["fields"]["vf_bar_regions"][0]["address"] == bars[0]["address"]
    p = inspect_cli(vf)
    assert f"BAR0: Memory at {bars[0]['address']:#x} (64-bit, non-prefetchable) [virtual]" in p.stdout


@pytest.mark.kernel
@pytest.mark.native_drivers
def test_closed_pipe_in_the_guest_ends_by_sigpipe():
    # the reading end is closed before the process starts: deterministic, one run is enough
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "vfio.host.inspect"], stdout=w, stderr=subprocess.PIPE,
                           timeout=300)
    finally:
        os.close(w)
    assert p.returncode == -signal.SIGPIPE and p.stderr == b"", p.stderr.decode()


@pytest.mark.kernel
@pytest.mark.native_drivers
def test_vga_region_and_err_irq_are_absent_not_errors(edu_bdf):
    p = inspect_cli(edu_bdf)
    assert p.returncode == 0, p.stderr
    assert "region 8 VGA: absent (not a VGA device)" in p.stdout
    assert "irq 3 ERR: absent (no PCI Express capability" in p.stdout
    assert "Errno 22" not in p.stdout and "[EINVAL]" not in p.stdout


@pytest.mark.noiommu
def test_noiommu_warning_is_one_tool_line(edu_bdf):
    p = inspect_cli(edu_bdf)
    lines = p.stderr.splitlines()
    warn = [ln for ln in lines if "no-IOMMU" in ln or "IOMMU" in ln]
    assert warn and all(ln.startswith("vfio-inspect: warning: ") for ln in warn), p.stderr
    assert "NoIommuWarning" not in p.stderr and ".py:" not in p.stderr, p.stderr
    assert "VFIO (opened through:" in p.stdout


#: the fd layer's bulk: what the listing needs none of to ask a group for its status
NOT_FOR_A_GROUP_STATUS = {"vfio.device", "vfio.container", "vfio.dma", "vfio.iommufd", "vfio.open", "vfio.irq",
                          "vfio.pci.config", "vfio.record"}


@pytest.mark.kernel
def test_the_listing_asks_the_kernel_through_the_group_alone():
    """With a group bound to VFIO (this leg's edu), the listing's viability is the
    kernel's answer (VFIO_GROUP_GET_STATUS on /dev/vfio/N), and asking it loads the
    group and the ioctl layer only: not the device model, the container, DMA or
    the config decoder (about 20 ms of start-up natively)."""
    code = ("import io, json, sys\nfrom vfio.host import inspect\nout = io.StringIO()\n"
            "rc = inspect.main(['--json'], out=out)\n"
            "print(json.dumps({'rc': rc, 'report': json.loads(out.getvalue()), 'modules': sorted(sys.modules)}))")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    got = json.loads(p.stdout)
    asked = [g for g in got["report"]["groups"] if g["viability_source"] == "kernel"]
    bound = [g for g in got["report"]["groups"] if os.path.exists(f"/dev/vfio/{g['group']}")]
    assert bound, "this leg binds a device to vfio-pci: some group has a /dev/vfio node"
    assert {g["group"] for g in asked} == {g["group"] for g in bound}, got["report"]["groups"]
    mods = set(got["modules"])
    assert {"vfio.group", "vfio.uapi"} <= mods
    assert not mods & NOT_FOR_A_GROUP_STATUS, sorted(mods & NOT_FOR_A_GROUP_STATUS)
