"""Our config-space decoding against ``lspci -vvv`` on the same bytes.

Every dump in fixtures/config/ (real devices: this project's development VM's
virtio functions and QEMU q35 guest devices, see fixtures/config/README.md) is
written out in the ``lspci -xxxx`` text form, read back with ``lspci -F``, and
the two decodings are compared: header IDs, command bits, BARs, the ROM,
bridge windows, and capability by capability (ID, offset, order, version and
the key fields lspci prints).  A capability title this test cannot map is a
failure, so a new fixture cannot slip through uncompared.

lspci (Debian's pciutils) is a test dependency, installed by the setup script.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from vfio.pci import regs as R
from vfio.pci.config import ConfigSpace, lspci_dump
from vfio.pci.ids import PciIds
from tests.paths import CONFIG_FIXTURES

FIXTURES = Path(CONFIG_FIXTURES)
DEVICES = json.loads((FIXTURES / "devices.json").read_text())
LSPCI = shutil.which("lspci") or "/usr/bin/lspci"


def run_lspci(data: bytes, tmp_path: Path) -> str:
    dump = tmp_path / "dump.txt"
    dump.write_text(lspci_dump(data, "00:01.0"))
    # -nn: numeric IDs next to names; -vvv: every decoded field.  stderr has libkmod noise.
    res = subprocess.run([LSPCI, "-vvv", "-nn", "-F", str(dump)], capture_output=True, text=True, check=True)
    assert res.stdout.startswith("00:01.0 "), res.stdout + res.stderr
    return res.stdout


def parse_lspci(text: str) -> dict:
    """Split lspci -vvv output into header lines and capability blocks."""
    lines = text.rstrip("\n").split("\n")
    out = {"title": lines[0], "header": {}, "regions": {}, "caps": []}
    cur = None
    for line in lines[1:]:
        if not line.strip():
            continue
        m = re.match(r"\tCapabilities: \[([0-9a-f]+)(?: v(\d+))?\] (.*)$", line)
        if m:
            cur = {"offset": int(m.group(1), 16), "version": int(m.group(2)) if m.group(2) else None,
                   "title": m.group(3), "body": []}
            out["caps"].append(cur)
            continue
        if line.startswith("\t\t") and cur is not None:
            cur["body"].append(line.strip())
            continue
        if line.startswith("\t") and not line.startswith("\t\t"):
            cur = None
            key, _, val = line.strip().partition(": ")
            m = re.match(r"Region (\d+)", key)
            if m:
                out["regions"][int(m.group(1))] = val
            else:
                out["header"][key] = val
    return out


def flags(text: str) -> dict[str, bool]:
    """'I/O+ Mem- BusMaster+' -> {'I/O': True, 'Mem': False, ...}"""
    return {m.group(1): m.group(2) == "+" for m in re.finditer(r"([A-Za-z0-9/<>][A-Za-z0-9/<>-]*?)([+-])(?=\s|$|,)", text)}


def body_line(cap: dict, prefix: str) -> str:
    for b in cap["body"]:
        if b.startswith(prefix):
            return b[len(prefix):].strip()
    raise AssertionError(f"lspci printed no {prefix!r} line for capability at {cap['offset']:#x}: {cap['body']}")


# ---- per-capability comparisons ------------------------------------------------------
def check_pm(ours, cap):
    m = re.fullmatch(r"Power Management version (\d+)", cap["title"])
    assert m and int(m.group(1)) == ours.version
    fl = flags(body_line(cap, "Flags:"))
    assert fl["PMEClk"] == ours.pme_clock and fl["DSI"] == ours.dsi
    assert fl["D1"] == ours.d1_support and fl["D2"] == ours.d2_support
    assert f"AuxCurrent={ours.aux_current_ma}mA" in body_line(cap, "Flags:")
    pme = re.search(r"PME\((.*)\)", body_line(cap, "Flags:")).group(1)
    assert flags(pme.replace(",", " ")) == ours.pme_support
    st = body_line(cap, "Status:")
    assert st.split()[0] == ("D3" if ours.power_state == 3 else f"D{ours.power_state}")
    sf = flags(st)
    assert sf["NoSoftRst"] == ours.no_soft_reset and sf["PME-Enable"] == ours.pme_enable
    assert f"DSel={ours.data_select} DScale={ours.data_scale}" in st


def check_msi(ours, cap):
    m = re.fullmatch(r"MSI: Enable([+-]) Count=(\d+)/(\d+) Maskable([+-]) 64bit([+-])", cap["title"])
    assert m, cap["title"]
    assert (m.group(1) == "+") == ours.enabled
    assert int(m.group(2)) == ours.vectors_enabled and int(m.group(3)) == ours.vectors_capable
    assert (m.group(4) == "+") == ours.per_vector_masking and (m.group(5) == "+") == ours.is_64bit
    addr = re.search(r"Address: ([0-9a-f]+)\s+Data: ([0-9a-f]+)", " ".join(cap["body"]))
    assert int(addr.group(1), 16) == ours.address and int(addr.group(2), 16) == ours.data
    if ours.per_vector_masking:
        mk = re.search(r"Masking: ([0-9a-f]+)\s+Pending: ([0-9a-f]+)", " ".join(cap["body"]))
        assert int(mk.group(1), 16) == ours.mask_bits and int(mk.group(2), 16) == ours.pending_bits


def check_msix(ours, cap):
    m = re.fullmatch(r"MSI-X: Enable([+-]) Count=(\d+) Masked([+-])", cap["title"])
    assert m, cap["title"]
    assert (m.group(1) == "+") == ours.enabled and int(m.group(2)) == ours.table_size
    assert (m.group(3) == "+") == ours.function_mask
    t = re.fullmatch(r"BAR=(\d+) offset=([0-9a-f]+)", body_line(cap, "Vector table:"))
    assert (int(t.group(1)), int(t.group(2), 16)) == (ours.table_bir, ours.table_offset)
    p = re.fullmatch(r"BAR=(\d+) offset=([0-9a-f]+)", body_line(cap, "PBA:"))
    assert (int(p.group(1)), int(p.group(2), 16)) == (ours.pba_bir, ours.pba_offset)


def check_exp(ours, cap):
    m = re.fullmatch(r"Express \(v(\d+)\) (.+?)(?: \(Slot([+-])\))?, MSI ([0-9a-f]{2})", cap["title"])
    assert m, cap["title"]
    assert int(m.group(1)) == ours.version
    assert m.group(2) == ours.port_type_name
    if m.group(3) is not None:
        assert (m.group(3) == "+") == ours.slot_implemented
    assert int(m.group(4), 16) == ours.interrupt_message_number
    devcap = body_line(cap, "DevCap:")
    assert f"MaxPayload {ours.max_payload_supported} bytes, PhantFunc {ours.phantom_functions}" in devcap
    body = " ".join(cap["body"])
    assert f"MaxPayload {ours.max_payload} bytes, MaxReadReq {ours.max_read_request} bytes" in body
    if ours.port_type in (R.EXP_TYPE_RC_END, R.EXP_TYPE_RC_EC):
        assert not any(b.startswith("LnkCap:") for b in cap["body"])  # lspci shows no link for these
        return
    lc = re.match(r"Port #(\d+), Speed ([^,]+), Width x(\d+)", body_line(cap, "LnkCap:"))
    assert int(lc.group(1)) == ours.port_number
    assert lc.group(2) == (ours.max_link_speed_name or "unknown") and int(lc.group(3)) == ours.max_link_width
    ls = re.match(r"Speed ([0-9.]+GT/s|unknown)[^,]*, Width x(\d+)", body_line(cap, "LnkSta:"))
    assert ls.group(1) == (ours.current_link_speed_name or "unknown") and int(ls.group(2)) == ours.negotiated_link_width
    if ours.slot_implemented:
        sc = re.search(r"Slot #(\d+)", body)
        assert int(sc.group(1)) == ours.physical_slot_number
        sf = flags(body_line(cap, "SltCap:"))
        assert sf["HotPlug"] == ours.hot_plug_capable and sf["AttnBtn"] == ours.attention_button
        assert sf["PwrCtrl"] == ours.power_controller and sf["Surprise"] == ours.hot_plug_surprise


def check_vndr(ours, cap, cs):
    if cs.vendor_id == R.VIRTIO_VENDOR_ID:
        m = re.fullmatch(r"Vendor Specific Information: VirtIO: (.+)", cap["title"])
        assert m, cap["title"]
        if m.group(1) == "<unknown>":  # pciutils 3.9 names only the four original cfg types
            assert ours.virtio_cfg_type not in (1, 2, 3, 4)
        else:
            assert m.group(1) == ours.virtio_cfg_type_name
        b = re.match(r"BAR=(\d+) offset=([0-9a-f]+) size=([0-9a-f]+)", cap["body"][0])
        assert (int(b.group(1)), int(b.group(2), 16), int(b.group(3), 16)) == \
            (ours.virtio_bar, ours.virtio_offset, ours.virtio_length)
        if ours.virtio_cfg_type == 2:
            assert int(re.search(r"multiplier=([0-9a-f]+)", cap["body"][0]).group(1), 16) == \
                ours.virtio_notify_off_multiplier
    else:
        m = re.fullmatch(r"Vendor Specific Information: Len=([0-9a-f]+) <\?>", cap["title"])
        assert m and int(m.group(1), 16) == ours.cap_length


def check_ssvid(ours, cap):
    m = re.search(r"\[([0-9a-f]{4}):([0-9a-f]{4})\]$", cap["title"])
    assert m and cap["title"].startswith("Subsystem: ")
    assert (int(m.group(1), 16), int(m.group(2), 16)) == (ours.subsystem_vendor_id, ours.subsystem_id)


def check_slotid(ours, cap):
    m = re.fullmatch(r"Slot ID: (\d+) slots, First([+-]), chassis ([0-9a-f]+)", cap["title"])
    assert m, cap["title"]
    assert int(m.group(1)) == ours.expansion_slots and (m.group(2) == "+") == ours.first_in_chassis
    assert int(m.group(3), 16) == ours.chassis_number


def check_shpc(ours, cap):
    assert cap["title"] == "Hot-plug capable"


def check_sata(ours, cap):
    m = re.fullmatch(r"SATA HBA v(\d+)\.(\d+) BAR(\d+) Offset=([0-9a-f]+)", cap["title"])
    assert m, cap["title"]
    assert (int(m.group(1)), int(m.group(2))) == (ours.revision_major, ours.revision_minor)
    # lspci prints BAROFST as the raw field, which counts dwords (AHCI 1.3 2.4.2); ours is in bytes
    assert int(m.group(3)) == ours.bar_index and int(m.group(4), 16) * 4 == ours.bar_offset


def check_aer(ours, cap):
    assert cap["title"] == "Advanced Error Reporting"
    a = body_line(cap, "AERCap:")
    assert int(re.search(r"First Error Pointer: ([0-9a-f]+)", a).group(1), 16) == ours.first_error_pointer
    f = flags(a)
    assert (f["ECRCGenCap"], f["ECRCGenEn"], f["ECRCChkCap"], f["ECRCChkEn"]) == \
        (ours.ecrc_generation_capable, ours.ecrc_generation_enable, ours.ecrc_check_capable, ours.ecrc_check_enable)
    log = [int(x, 16) for x in body_line(cap, "HeaderLog:").split()]
    assert log == ours.header_log
    # bit 4 of the uncorrectable severity is Data Link Protocol error: lspci's "DLP"
    assert flags(body_line(cap, "UESvrt:"))["DLP"] == bool(ours.uncorrectable_severity & 0x10)
    assert flags(body_line(cap, "CEMsk:"))["AdvNonFatalErr"] == bool(ours.correctable_mask & 0x2000)


def check_dsn(ours, cap):
    m = re.fullmatch(r"Device Serial Number ([0-9a-f-]+)", cap["title"])
    assert m and m.group(1) == ours.serial_str


ACS_NAMES = {"SrcValid": "source_validation", "TransBlk": "translation_blocking", "ReqRedir": "p2p_request_redirect",
             "CmpltRedir": "p2p_completion_redirect", "UpstreamFwd": "upstream_forwarding",
             "EgressCtrl": "p2p_egress_control", "DirectTrans": "direct_translated_p2p"}


def check_acs(ours, cap):
    assert cap["title"] == "Access Control Services"
    cap_f, ctl_f = flags(body_line(cap, "ACSCap:")), flags(body_line(cap, "ACSCtl:"))
    for lname, ours_name in ACS_NAMES.items():
        assert cap_f[lname] == ours.fields[ours_name], lname
        assert ctl_f[lname] == ours.fields[ours_name + "_enable"], lname


def check_ats(ours, cap):
    assert cap["title"] == "Address Translation Service (ATS)"
    assert int(re.search(r"Invalidate Queue Depth: ([0-9a-f]+)", body_line(cap, "ATSCap:")).group(1), 16) == \
        ours.invalidate_queue_depth
    ctl = body_line(cap, "ATSCtl:")
    assert ctl.startswith("Enable+" if ours.enabled else "Enable-")
    assert int(re.search(r"Smallest Translation Unit: ([0-9a-f]+)", ctl).group(1), 16) == \
        ours.smallest_translation_unit


STD_CHECKS = {R.CAP_ID_PM: check_pm, R.CAP_ID_MSI: check_msi, R.CAP_ID_MSIX: check_msix, R.CAP_ID_EXP: check_exp,
              R.CAP_ID_SSVID: check_ssvid, R.CAP_ID_SLOTID: check_slotid, R.CAP_ID_SHPC: check_shpc,
              R.CAP_ID_SATA: check_sata}
EXT_CHECKS = {R.EXT_CAP_ID_ERR: check_aer, R.EXT_CAP_ID_DSN: check_dsn, R.EXT_CAP_ID_ACS: check_acs,
              R.EXT_CAP_ID_ATS: check_ats}


def check_header(cs: ConfigSpace, ls: dict):
    id_pairs = re.findall(r"\[([0-9a-f]{4}):([0-9a-f]{4})\]", ls["title"])
    assert (int(id_pairs[0][0], 16), int(id_pairs[0][1], 16)) == (cs.vendor_id, cs.device_id)
    cls = re.search(r" \[([0-9a-f]{4})\]: ", ls["title"])
    assert int(cls.group(1), 16) == cs.class_code >> 8
    # names come from the same pci.ids lspci reads
    ids = PciIds.default()
    assert ids.path is not None, "no pci.ids installed (Debian: pci.ids package, pulled in by pciutils)"
    cname = ids.class_name(cs.class_code)
    if cname:
        assert ls["title"].startswith(f"00:01.0 {cname} ["), (cname, ls["title"])
    vname, dname = ids.vendor_name(cs.vendor_id), ids.device_name(cs.vendor_id, cs.device_id)
    if vname and dname:
        assert f": {vname} {dname} [{cs.vendor_id:04x}:{cs.device_id:04x}]" in ls["title"]
    rev = re.search(r"\(rev ([0-9a-f]{2})\)", ls["title"])
    assert (int(rev.group(1), 16) if rev else 0) == cs.revision
    pi = re.search(r"\(prog-if ([0-9a-f]{2})", ls["title"])
    assert (int(pi.group(1), 16) if pi else 0) == cs.prog_if
    ctl = flags(ls["header"]["Control"])
    ours = cs.command_flags()
    assert (ctl["I/O"], ctl["Mem"], ctl["BusMaster"], ctl["SERR"], ctl["DisINTx"], ctl["ParErr"]) == \
        (ours["io"], ours["memory"], ours["bus_master"], ours["serr"], ours["intx_disable"], ours["parity"])
    st = flags(ls["header"]["Status"])
    assert st["Cap"] == cs.status_flags()["cap_list"] and st["INTx"] == cs.status_flags()["interrupt"]
    if "Subsystem" in ls["header"] and cs.header_type == R.HEADER_TYPE_NORMAL:
        sub = re.search(r"\[([0-9a-f]{4}):([0-9a-f]{4})\]$", ls["header"]["Subsystem"])
        assert (int(sub.group(1), 16), int(sub.group(2), 16)) == (cs.subsystem_vendor_id, cs.subsystem_id)
    if cs.interrupt_pin:
        m = re.match(r"pin ([A-D]) routed to IRQ (\d+)", ls["header"]["Interrupt"])
        assert ord(m.group(1)) - ord("A") + 1 == cs.interrupt_pin and int(m.group(2)) == cs.interrupt_line


def check_bars(cs: ConfigSpace, ls: dict):
    ours = {b.index: b for b in cs.bars}
    regions = dict(ls["regions"])
    for b in cs.bars:
        # lspci quirk when reading a dump (-F): the upper dword of a 64-bit BAR above 4 GiB is shown
        # again as a 32-bit BAR "at <unassigned>".  It is not a BAR: check it is that and drop it.
        if b.kind == "mem64" and b.index + 1 in regions:
            assert b.raw >> 32, regions[b.index + 1]
            assert regions.pop(b.index + 1).startswith("Memory at <unassigned> (32-bit")
    assert sorted(ours) == sorted(regions)
    for i, text in regions.items():
        b = ours[i]
        if b.kind == "io":
            m = re.match(r"I/O ports at ([0-9a-f]+)", text)
            assert m and int(m.group(1), 16) == b.address, text
        else:
            m = re.match(r"Memory at ([0-9a-f]+) \((32|64)-bit, (non-prefetchable|prefetchable)\)", text)
            assert m, text
            assert int(m.group(1), 16) == b.address
            assert m.group(2) == ("64" if b.kind == "mem64" else "32")
            assert (m.group(3) == "prefetchable") == b.prefetchable
    rom_keys = [k for k in ls["header"] if k.startswith("Expansion ROM")]
    if cs.rom is None:
        assert not rom_keys
    else:
        assert len(rom_keys) == 1
        m = re.match(r"Expansion ROM at ([0-9a-f]+)( \[disabled\])?", rom_keys[0])
        assert int(m.group(1), 16) == cs.rom.address and (m.group(2) is None) == cs.rom.enabled, rom_keys


def check_bridge(cs: ConfigSpace, ls: dict):
    br = cs.bridge
    if br is None:
        assert "Bus" not in ls["header"]
        return
    m = re.match(r"primary=([0-9a-f]+), secondary=([0-9a-f]+), subordinate=([0-9a-f]+), sec-latency=(\d+)",
                 ls["header"]["Bus"])
    assert tuple(int(x, 16) for x in m.groups()[:3]) == (br.primary_bus, br.secondary_bus, br.subordinate_bus)
    assert int(m.group(4)) == br.secondary_latency_timer
    for key, enabled, base, limit in (("I/O behind bridge", br.io_enabled, br.io_base, br.io_limit),
                                      ("Memory behind bridge", br.memory_enabled, br.memory_base, br.memory_limit),
                                      ("Prefetchable memory behind bridge", br.prefetch_enabled, br.prefetch_base,
                                       br.prefetch_limit)):
        text = ls["header"][key]
        r = re.match(r"([0-9a-f]+)-([0-9a-f]+)", text)
        assert r and (int(r.group(1), 16), int(r.group(2), 16)) == (base, limit), (key, text)
        assert ("[disabled]" not in text) == enabled, (key, text)


@pytest.mark.parametrize("name", sorted(DEVICES))
def test_matches_lspci(name, tmp_path):
    data = (FIXTURES / f"{name}.bin").read_bytes()
    cs = ConfigSpace(data, source=name)
    ls = parse_lspci(run_lspci(data, tmp_path))
    check_header(cs, ls)
    check_bars(cs, ls)
    check_bridge(cs, ls)
    ours = [(c.offset, None, c) for c in cs.capabilities] + \
           [(c.offset, c.version, c) for c in cs.extended_capabilities]
    assert [(o, v) for o, v, _ in ours] == [(c["offset"], c["version"]) for c in ls["caps"]]
    for (_, _, cap), lcap in zip(ours, ls["caps"]):
        checks = EXT_CHECKS if lcap["version"] is not None else STD_CHECKS
        if cap.id == R.CAP_ID_VNDR and lcap["version"] is None:
            check_vndr(cap, lcap, cs)
            continue
        assert cap.id in checks, f"{name}: no lspci comparison for {cap.label} at {cap.offset:#x}: {lcap['title']}"
        checks[cap.id](cap, lcap)


def test_fixture_set_covers_the_brief():
    """The dumps include what the comparison is meant to exercise (guards against a thinned-out fixture set)."""
    std, ext, kinds = set(), set(), set()
    for name in DEVICES:
        cs = ConfigSpace((FIXTURES / f"{name}.bin").read_bytes())
        std |= {c.id for c in cs.capabilities}
        ext |= {c.id for c in cs.extended_capabilities}
        kinds |= {b.kind for b in cs.bars} | {f"type{cs.header_type}"}
    assert {R.CAP_ID_PM, R.CAP_ID_MSI, R.CAP_ID_MSIX, R.CAP_ID_EXP, R.CAP_ID_VNDR} <= std
    assert {R.EXT_CAP_ID_ERR, R.EXT_CAP_ID_DSN, R.EXT_CAP_ID_ACS, R.EXT_CAP_ID_ATS} <= ext
    assert {"io", "mem32", "mem64", "type0", "type1"} <= kinds
    for name in ("edu", "nvme-rciep", "e1000e", "pcie-root-port", "virtio-net-pcie", "host-virtio-net"):
        assert name in DEVICES
