"""ConfigSpace decoding: synthetic config spaces with hand-computed fields, and broken lists.

Every expected value below is worked out by hand from the bytes the test
writes (the PCI spec's layouts), not taken from the decoder's own output.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vfio.pci import regs as R
from vfio.pci.config import (ConfigSpace, ConfigSpaceError, bar_size_from_mask, lspci_dump, walk_capabilities,
                             walk_extended_capabilities)
from tests.paths import CONFIG_FIXTURES

FIXTURES = Path(CONFIG_FIXTURES)


class Cfg:
    """A little builder for synthetic config spaces."""

    def __init__(self, size=256, vendor=0x1234, device=0x5678, header_type=0, cls=0x020000, rev=0x07):
        self.b = bytearray(size)
        self.w16(0, vendor)
        self.w16(2, device)
        self.w32(8, (cls << 8) | rev)
        self.b[R.HEADER_TYPE] = header_type

    def w8(self, off, v):
        self.b[off] = v
        return self

    def w16(self, off, v):
        self.b[off:off + 2] = struct.pack("<H", v)
        return self

    def w32(self, off, v):
        self.b[off:off + 4] = struct.pack("<I", v)
        return self

    def caps(self, *chain):
        """chain: (offset, id) in list order; links them and sets Status.CapList."""
        self.b[R.STATUS] |= R.STATUS_CAP_LIST
        self.b[R.CAPABILITY_LIST] = chain[0][0] if chain else 0
        for i, (off, cid) in enumerate(chain):
            self.b[off] = cid
            self.b[off + 1] = chain[i + 1][0] if i + 1 < len(chain) else 0
        return self

    def ext(self, *chain):
        """chain: (offset, id, version) in list order."""
        for i, (off, cid, ver) in enumerate(chain):
            nxt = chain[i + 1][0] if i + 1 < len(chain) else 0
            self.w32(off, R.ext_cap_header(cid, ver, nxt))
        return self

    def cs(self, **kw):
        return ConfigSpace(bytes(self.b), **kw)


# ---- header ----------------------------------------------------------------------
def test_header_fields():
    c = Cfg(vendor=0x8086, device=0x10D3, cls=0x010802, rev=0x02)
    c.w16(R.COMMAND, 0x0507).w16(R.STATUS, 0x4010 | 0x0008)
    c.w8(R.CACHE_LINE_SIZE, 0x10).w8(R.LATENCY_TIMER, 0x20).w8(R.HEADER_TYPE, 0x80).w8(R.BIST, 0x80)
    c.w16(R.SUBSYSTEM_VENDOR_ID, 0x1AF4).w16(R.SUBSYSTEM_ID, 0x1100)
    c.w8(R.INTERRUPT_LINE, 11).w8(R.INTERRUPT_PIN, 1)
    cs = c.cs()
    assert (cs.vendor_id, cs.device_id, cs.revision) == (0x8086, 0x10D3, 2)
    assert (cs.class_code, cs.base_class, cs.subclass, cs.prog_if) == (0x010802, 0x01, 0x08, 0x02)
    assert (cs.command, cs.status) == (0x0507, 0x4018)
    assert (cs.cache_line_size, cs.latency_timer, cs.bist) == (0x10, 0x20, 0x80)
    assert cs.header_type == 0 and cs.multifunction
    assert (cs.subsystem_vendor_id, cs.subsystem_id) == (0x1AF4, 0x1100)
    assert (cs.interrupt_line, cs.interrupt_pin) == (11, 1)
    f = cs.command_flags()
    assert f["io"] and f["memory"] and f["bus_master"] and f["serr"] and f["intx_disable"]
    assert not f["parity"] and not f["special_cycles"]
    s = cs.status_flags()
    assert s["cap_list"] and s["interrupt"] and s["signaled_system_error"] and not s["detected_parity_error"]
    assert cs.capabilities == []   # CapList set but pointer 0: an empty list


def test_caplist_bit_clear_means_no_list_even_with_pointer():
    c = Cfg().caps((0x40, R.CAP_ID_PM))
    c.b[R.STATUS] &= ~R.STATUS_CAP_LIST
    assert c.cs().capabilities == []


# ---- BARs ----------------------------------------------------------------------------
def test_bars_type0_all_kinds():
    c = Cfg()
    c.w32(0x10, 0xFEB00000)                         # BAR0 mem32 non-prefetchable
    c.w32(0x14, 0x0000C001)                         # BAR1 io at 0xc000
    c.w32(0x18, 0xE000000C).w32(0x1C, 0x00000001)   # BAR2+3 mem64 prefetchable at 0x1_e000_0000
    c.w32(0x24, 0x00000008)                         # BAR5 mem32 prefetchable, unassigned
    cs = c.cs(bar_sizes={0: 0x1000, 2: 0x20000000})
    bars = {b.index: b for b in cs.bars}
    assert sorted(bars) == [0, 1, 2, 5]             # BAR4 reads 0 and has no size: not implemented
    assert (bars[0].kind, bars[0].address, bars[0].prefetchable, bars[0].size) == ("mem32", 0xFEB00000, False, 0x1000)
    assert (bars[1].kind, bars[1].address, bars[1].size) == ("io", 0xC000, None)
    assert (bars[2].kind, bars[2].address, bars[2].prefetchable) == ("mem64", 0x1E0000000, True)
    assert bars[2].raw == 0x1E000000C and bars[2].size == 0x20000000 and bars[2].offset == 0x18
    assert (bars[5].kind, bars[5].address, bars[5].prefetchable) == ("mem32", 0, True)
    assert cs.bar(3) is None and cs.bar(2) is bars[2]


def test_bar_with_known_size_but_zero_register_is_listed():
    cs = Cfg().cs(bar_sizes={4: 0x100})
    assert [(b.index, b.kind, b.size) for b in cs.bars] == [(4, "mem32", 0x100)]


def test_bar_64bit_in_last_slot_is_an_error():
    c = Cfg().w32(0x24, 0x4)
    with pytest.raises(ConfigSpaceError) as e:
        c.cs().bars
    assert e.value.offset == 0x24 and "no upper half" in str(e.value)


def test_bar_reserved_memory_type_is_an_error():
    with pytest.raises(ConfigSpaceError) as e:
        Cfg().w32(0x14, 0x6).cs().bars
    assert e.value.offset == 0x14


def test_bar_size_must_be_power_of_two():
    with pytest.raises(ConfigSpaceError):
        Cfg().w32(0x10, 0xFE000000).cs(bar_sizes={0: 0x3000}).bars


@pytest.mark.parametrize("mask,kind,size", [
    (0xFFFFF000, "mem32", 0x1000), (0xFFFFF008, "mem32", 0x1000), (0xFFFFFFE1, "io", 0x20),
    (0x0000FFE1, "io", 0x20),            # 16-bit I/O decoder: upper bits hardwired 0
    (0xFFFFFFFF_C000000C, "mem64", 0x40000000), (0xFFFFFFFF_0000000C, "mem64", 1 << 32),
    (0xFFFFFFF0_0000000C, "mem64", 1 << 36),
    (0, "mem32", 0)])
def test_bar_size_from_mask(mask, kind, size):
    assert bar_size_from_mask(mask, kind) == size


def test_rom_and_bridge_header():
    c = Cfg(header_type=1, cls=0x060400)
    c.w32(0x10, 0xFE38E000)
    c.w8(R.PRIMARY_BUS, 0).w8(R.SECONDARY_BUS, 1).w8(R.SUBORDINATE_BUS, 3).w8(R.SEC_LATENCY_TIMER, 0x40)
    c.w8(R.IO_BASE, 0x11).w8(R.IO_LIMIT, 0x21).w16(R.IO_BASE_UPPER16, 0x0001).w16(R.IO_LIMIT_UPPER16, 0x0001)
    c.w16(R.MEMORY_BASE, 0xFE00).w16(R.MEMORY_LIMIT, 0xFE10)
    c.w16(R.PREF_MEMORY_BASE, 0xFFF1).w16(R.PREF_MEMORY_LIMIT, 0x0001)   # closed 64-bit window
    c.w32(R.ROM_ADDRESS1, 0xFEB00001)
    cs = c.cs()
    assert [(b.index, b.kind) for b in cs.bars] == [(0, "mem32")]
    assert cs.subsystem_vendor_id is None      # bridges carry it in an SSVID capability
    br = cs.bridge
    assert (br.primary_bus, br.secondary_bus, br.subordinate_bus, br.secondary_latency_timer) == (0, 1, 3, 0x40)
    assert br.io_32bit and (br.io_base, br.io_limit) == (0x11000, 0x12FFF) and br.io_enabled
    assert (br.memory_base, br.memory_limit) == (0xFE000000, 0xFE1FFFFF) and br.memory_enabled
    assert br.prefetch_64bit and not br.prefetch_enabled
    rom = cs.rom
    assert (rom.offset, rom.address, rom.enabled) == (0x38, 0xFEB00000, True)
    assert Cfg().cs().rom is None and Cfg().cs().bridge is None


# ---- capabilities: fields -------------------------------------------------------------------
def test_pm_fields():
    c = Cfg().caps((0x40, R.CAP_ID_PM))
    # PMC: version 3, DSI, aux 100 mA (code 2), D1, PME from D0 + D3hot + D3cold
    c.w16(0x42, 3 | R.PM_CAP_DSI | (2 << 6) | R.PM_CAP_D1 | (0b11001 << 11))
    c.w16(0x44, 0x3 | R.PM_CTRL_NO_SOFT_RESET | R.PM_CTRL_PME_ENABLE | (5 << 9) | (2 << 13) | R.PM_CTRL_PME_STATUS)
    pm = c.cs().pm
    assert (pm.id, pm.offset, pm.next, pm.name, len(pm.raw)) == (1, 0x40, 0, "Power Management", 8)
    assert pm.version == 3 and pm.dsi and not pm.pme_clock and pm.aux_current_ma == 100
    assert pm.d1_support and not pm.d2_support
    assert pm.pme_support == {"D0": True, "D1": False, "D2": False, "D3hot": True, "D3cold": True}
    assert (pm.power_state, pm.power_state_name) == (3, "D3hot")
    assert pm.no_soft_reset and pm.pme_enable and pm.pme_status
    assert (pm.data_select, pm.data_scale) == (5, 2)


@pytest.mark.parametrize("ctl,size", [(0x0000, 10), (0x0080, 14), (0x0100, 20), (0x0180, 24)])
def test_msi_sizes(ctl, size):
    c = Cfg().caps((0x50, R.CAP_ID_MSI)).w16(0x52, ctl)
    assert len(c.cs().msi.raw) == size


def test_msi_fields_64bit_maskable():
    c = Cfg().caps((0x50, R.CAP_ID_MSI))
    c.w16(0x52, 0x0001 | (3 << 1) | (2 << 4) | R.MSI_FLAGS_64BIT | R.MSI_FLAGS_MASKBIT)
    c.w32(0x54, 0xFEE00000).w32(0x58, 0x1).w16(0x5C, 0x4041).w32(0x60, 0xF0).w32(0x64, 0x3)
    m = c.cs().msi
    assert m.enabled and m.vectors_capable == 8 and m.vectors_enabled == 4
    assert m.is_64bit and m.per_vector_masking
    assert (m.address, m.data, m.mask_bits, m.pending_bits) == (0x1FEE00000, 0x4041, 0xF0, 0x3)


def test_msi_fields_32bit():
    c = Cfg().caps((0x50, R.CAP_ID_MSI)).w16(0x52, 0).w32(0x54, 0xFEE01000).w16(0x58, 0x21)
    m = c.cs().msi
    assert not m.is_64bit and (m.address, m.data) == (0xFEE01000, 0x21)
    assert m.mask_bits is None and m.pending_bits is None and not m.enabled


def test_msix_fields():
    c = Cfg().caps((0x70, R.CAP_ID_MSIX))
    c.w16(0x72, R.MSIX_FLAGS_ENABLE | R.MSIX_FLAGS_MASKALL | 64)   # 65 vectors
    c.w32(0x74, 0x2000 | 4).w32(0x78, 0x3000 | 5)
    x = c.cs().msix
    assert x.table_size == 65 and x.enabled and x.function_mask
    assert (x.table_bir, x.table_offset, x.pba_bir, x.pba_offset) == (4, 0x2000, 5, 0x3000)
    assert len(x.raw) == 12


def test_pcie_fields_root_port_v2():
    c = Cfg(header_type=1, cls=0x060400, size=4096).caps((0x60, R.CAP_ID_EXP))
    c.w16(0x62, 2 | (R.EXP_TYPE_ROOT_PORT << 4) | R.EXP_FLAGS_SLOT | (3 << 9))
    c.w32(0x64, 1 | R.EXP_DEVCAP_FLR | R.EXP_DEVCAP_EXT_TAG)                    # MPS 256 supported
    c.w16(0x68, R.EXP_DEVCTL_CERE | (1 << 5) | (2 << 12) | R.EXP_DEVCTL_NOSNOOP_EN)  # MPS 256, MRRS 512
    c.w16(0x6A, R.EXP_DEVSTA_URD)
    c.w32(0x6C, (7 << 24) | (16 << 4) | 4 | R.EXP_LNKCAP_DLLLARC)                # port 7, x16, 16GT/s
    c.w16(0x72, (4 << 4) | 1 | R.EXP_LNKSTA_DLLLA)                              # x4 at 2.5GT/s, DLL active
    c.w32(0x74, R.EXP_SLTCAP_HPC | R.EXP_SLTCAP_ABP | (9 << 19))                # slot 9
    c.w16(0x7A, R.EXP_SLTSTA_PDS)
    c.w32(0x8C, 0b1110)                                                           # LNKCAP2: 2.5/5/8 GT/s
    e = c.cs().pcie
    assert len(e.raw) == 0x3C and e.version == 2
    assert (e.port_type, e.port_type_name) == (4, "Root Port")
    assert e.slot_implemented and e.interrupt_message_number == 3
    assert e.max_payload_supported == 256 and e.flr_capable and e.extended_tag_supported
    assert (e.max_payload, e.max_read_request) == (256, 512) and e.no_snoop and e.correctable_error_reporting
    assert e.unsupported_request_detected and not e.fatal_error_detected
    assert (e.port_number, e.max_link_width, e.max_link_speed, e.max_link_speed_name) == (7, 16, 4, "16GT/s")
    assert (e.negotiated_link_width, e.current_link_speed_name, e.dll_link_active) == (4, "2.5GT/s", True)
    assert e.hot_plug_capable and e.attention_button and e.physical_slot_number == 9 and e.presence_detect
    assert "rtctl" in e.fields and e.supported_link_speeds_vector == 0b111


def test_pcie_v1_endpoint_size_and_no_slot_fields():
    c = Cfg(size=4096).caps((0xE0, R.CAP_ID_EXP)).w16(0xE2, 1 | (R.EXP_TYPE_RC_END << 4))
    e = c.cs().pcie
    assert len(e.raw) == 0x14 and e.port_type_name == "Root Complex Integrated Endpoint"
    assert "sltcap" not in e.fields and "devcap2" not in e.fields
    with pytest.raises(AttributeError):
        e.sltcap


def test_vendor_specific_virtio_and_plain():
    c = Cfg(vendor=R.VIRTIO_VENDOR_ID).caps((0x40, R.CAP_ID_VNDR), (0x54, R.CAP_ID_VNDR))
    c.w8(0x42, 20).w8(0x43, 2).w8(0x44, 4).w32(0x48, 0x3000).w32(0x4C, 0x1000).w32(0x50, 4)
    c.w8(0x56, 16).w8(0x57, 1).w8(0x58, 4).w32(0x5C, 0).w32(0x60, 0x1000)
    a, b = c.cs().capabilities
    assert (a.cap_length, a.virtio_cfg_type_name, a.virtio_bar, a.virtio_offset, a.virtio_length) == \
        (20, "Notify", 4, 0x3000, 0x1000)
    assert a.virtio_notify_off_multiplier == 4 and len(a.raw) == 20 and len(a.payload) == 17
    assert b.virtio_cfg_type_name == "CommonCfg" and "virtio_notify_off_multiplier" not in b.fields
    plain = Cfg().caps((0x40, R.CAP_ID_VNDR)).w8(0x42, 8).w8(0x43, 0xAB).cs().capabilities[0]
    assert plain.cap_length == 8 and plain.payload == b"\xab" + bytes(4) and "virtio_cfg_type" not in plain.fields


def test_vendor_specific_length_below_header_is_an_error():
    with pytest.raises(ConfigSpaceError) as e:
        Cfg().caps((0x40, R.CAP_ID_VNDR)).w8(0x42, 2).cs().capabilities
    assert e.value.offset == 0x42


def test_ssvid_slotid_sata_af():
    c = Cfg(header_type=1).caps((0x40, R.CAP_ID_SSVID), (0x48, R.CAP_ID_SLOTID), (0x50, R.CAP_ID_SATA),
                                (0x58, R.CAP_ID_AF))
    c.w16(0x44, 0x1B36).w16(0x46, 0x0001)
    c.w8(0x4A, 0x20 | 3).w8(0x4B, 7)
    c.w8(0x52, 0x10).w32(0x54, 0x8 | (4 << 4))
    c.w8(0x5B, R.AF_CAP_FLR | R.AF_CAP_TP)
    cs = c.cs()
    ss, sl, sa, af = cs.capabilities
    assert (ss.subsystem_vendor_id, ss.subsystem_id) == (0x1B36, 1) == (cs.subsystem_vendor_id, cs.subsystem_id)
    assert (sl.expansion_slots, sl.first_in_chassis, sl.chassis_number) == (3, True, 7)
    assert (sa.revision_major, sa.revision_minor, sa.bar_index, sa.bar_offset) == (1, 0, 4, 16)
    assert af.flr_capable and af.tp_capable


def test_unknown_capability_keeps_number_and_raw_extent():
    c = Cfg().caps((0x40, 0x42), (0x60, R.CAP_ID_PM))
    c.b[0x44] = 0x99
    unknown, pm = c.cs().capabilities
    assert unknown.id == 0x42 and unknown.name is None and unknown.fields == {}
    assert unknown.label == "capability 0x42" and len(unknown.raw) == 0x20 and unknown.raw[4] == 0x99
    assert pm.name == "Power Management"
    last = Cfg().caps((0xF0, 0x77)).cs().capabilities[0]
    assert len(last.raw) == 0x10   # runs to the end of the standard space


# ---- capabilities: broken lists ----------------------------------------------------------------
def test_loop_is_an_error_naming_the_pointer():
    c = Cfg().caps((0x40, R.CAP_ID_PM), (0x50, R.CAP_ID_MSI))
    c.b[0x51] = 0x40                     # MSI points back to PM
    with pytest.raises(ConfigSpaceError) as e:
        c.cs().capabilities
    assert e.value.offset == 0x51 and "loops" in str(e.value)


def test_self_loop():
    c = Cfg().caps((0x40, R.CAP_ID_PM))
    c.b[0x41] = 0x40
    with pytest.raises(ConfigSpaceError, match="loops"):
        walk_capabilities(bytes(c.b))


@pytest.mark.parametrize("ptr,where_msg", [(0x20, "into the standard header"), (0x3C, "into the standard header"),
                                            (0x41, "not dword aligned"), (0x4E, "not dword aligned")])
def test_bad_head_pointer(ptr, where_msg):
    c = Cfg()
    c.b[R.STATUS] |= R.STATUS_CAP_LIST
    c.b[R.CAPABILITY_LIST] = ptr
    with pytest.raises(ConfigSpaceError, match=where_msg) as e:
        c.cs().capabilities
    assert e.value.offset == R.CAPABILITY_LIST


def test_bad_next_pointer_names_the_next_byte():
    c = Cfg().caps((0x40, R.CAP_ID_PM))
    c.b[0x41] = 0x10
    with pytest.raises(ConfigSpaceError) as e:
        c.cs().capabilities
    assert e.value.offset == 0x41


def test_overlapping_capabilities():
    c = Cfg().caps((0x40, R.CAP_ID_MSIX), (0x48, R.CAP_ID_PM))   # MSI-X is 12 bytes: 0x40..0x4b
    with pytest.raises(ConfigSpaceError, match="overlaps") as e:
        c.cs().capabilities
    assert e.value.offset == 0x40


def test_capability_inside_another_of_unknown_size():
    c = Cfg().caps((0x44, 0x42), (0x40, R.CAP_ID_MSIX))   # unknown ID sitting inside the MSI-X registers
    with pytest.raises(ConfigSpaceError, match="lies inside"):
        c.cs().capabilities


def test_capability_running_off_the_end():
    c = Cfg(size=4096).caps((0xE0, R.CAP_ID_EXP)).w16(0xE2, 2)    # v2 is 0x3c bytes: 0xe0 + 0x3c > 0x100
    with pytest.raises(ConfigSpaceError, match="runs past the end") as e:
        c.cs().capabilities
    assert e.value.offset == 0xE0


def test_corrupt_list_does_not_break_header_or_lenient_dict():
    c = Cfg().caps((0x40, R.CAP_ID_PM))
    c.b[0x41] = 0x40
    cs = c.cs()
    assert cs.vendor_id == 0x1234
    d = cs.to_dict(strict=False)
    assert d["capabilities"]["offset"] == 0x41 and "loops" in d["capabilities"]["error"]
    with pytest.raises(ConfigSpaceError):
        cs.to_dict()


# ---- extended capabilities ---------------------------------------------------------------------
def pcie_cfg():
    return Cfg(size=4096).caps((0x40, R.CAP_ID_EXP)).w16(0x42, 2)


def test_extended_fields():
    c = pcie_cfg().ext((0x100, R.EXT_CAP_ID_ERR, 2), (0x140, R.EXT_CAP_ID_DSN, 1), (0x150, R.EXT_CAP_ID_ACS, 1),
                       (0x160, R.EXT_CAP_ID_ATS, 1), (0x170, R.EXT_CAP_ID_VNDR, 1), (0x190, R.EXT_CAP_ID_ARI, 1),
                       (0x1A0, 0x7FF, 3))
    c.w32(0x104, 0x10).w32(0x10C, 0x00062030).w32(0x114, 0x2000).w32(0x118, 0x0A0 | 0x5)
    c.w32(0x11C, 0x40000001)
    c.w32(0x144, 0xFFFF1234).w32(0x148, 0x525400FF)
    c.w16(0x154, R.ACS_SV | R.ACS_RR | R.ACS_CR | R.ACS_UF).w16(0x156, R.ACS_SV)
    c.w16(0x164, 0x20 | 5).w16(0x166, R.ATS_CTRL_ENABLE | 3)
    c.w32(0x174, 0x7 | (2 << 16) | (0x18 << 20))
    c.w16(0x194, (4 << 8) | 1)
    cs = c.cs()
    assert [(x.offset, x.id, x.version) for x in cs.extended_capabilities] == [
        (0x100, 1, 2), (0x140, 3, 1), (0x150, 0xD, 1), (0x160, 0xF, 1), (0x170, 0xB, 1), (0x190, 0xE, 1),
        (0x1A0, 0x7FF, 3)]
    aer = cs.find_ext(R.EXT_CAP_ID_ERR)
    assert aer.uncorrectable_status == 0x10 and aer.uncorrectable_severity == 0x00062030
    assert aer.correctable_mask == 0x2000 and aer.first_error_pointer == 5
    assert aer.ecrc_generation_capable and aer.ecrc_check_capable and not aer.ecrc_generation_enable
    assert aer.header_log == [0x40000001, 0, 0, 0] and len(aer.raw) == 0x2C
    dsn = cs.find_ext(R.EXT_CAP_ID_DSN)
    assert dsn.serial == 0x525400FF_FFFF1234 and dsn.serial_str == "52-54-00-ff-ff-ff-12-34"
    acs = cs.find_ext(R.EXT_CAP_ID_ACS)
    assert acs.source_validation and acs.source_validation_enable and acs.p2p_request_redirect
    assert not acs.p2p_request_redirect_enable and not acs.translation_blocking and acs.egress_vector_bits == 0
    ats = cs.find_ext(R.EXT_CAP_ID_ATS)
    assert (ats.invalidate_queue_depth, ats.page_aligned_request, ats.enabled, ats.smallest_translation_unit) == \
        (5, True, True, 3)
    v = cs.find_ext(R.EXT_CAP_ID_VNDR)
    assert (v.vsec_id, v.vsec_rev, v.vsec_length, len(v.raw)) == (7, 2, 0x18, 0x18)
    ari = cs.find_ext(R.EXT_CAP_ID_ARI)
    assert ari.next_function == 4 and ari.mfvc and not ari.acs
    unk = cs.extended_capabilities[-1]
    assert unk.name is None and unk.label == "extended capability 0x07ff" and len(unk.raw) == 0x1000 - 0x1A0


def test_extended_list_needs_pcie_capability():
    c = Cfg(size=4096).ext((0x100, R.EXT_CAP_ID_DSN, 1))
    assert c.cs().extended_capabilities == []           # conventional function: 0x100.. is not a list
    assert len(walk_extended_capabilities(bytes(c.b))) == 1


def test_extended_empty_and_all_ones():
    assert pcie_cfg().cs().extended_capabilities == []
    assert pcie_cfg().w32(0x100, 0xFFFFFFFF).cs().extended_capabilities == []
    assert Cfg().caps((0x40, R.CAP_ID_EXP)).w16(0x42, 2).cs().extended_capabilities == []   # 256 bytes


def test_extended_loop():
    c = pcie_cfg().ext((0x100, R.EXT_CAP_ID_ERR, 2), (0x140, R.EXT_CAP_ID_DSN, 1))
    c.w32(0x140, R.ext_cap_header(R.EXT_CAP_ID_DSN, 1, 0x100))
    with pytest.raises(ConfigSpaceError, match="loops") as e:
        c.cs().extended_capabilities
    assert e.value.offset == 0x140


def test_extended_pointer_into_standard_space():
    c = pcie_cfg().w32(0x100, R.ext_cap_header(R.EXT_CAP_ID_DSN, 1, 0x80))
    with pytest.raises(ConfigSpaceError, match="standard config space") as e:
        c.cs().extended_capabilities
    assert e.value.offset == 0x100


def test_extended_pointer_to_empty_header():
    c = pcie_cfg().w32(0x100, R.ext_cap_header(R.EXT_CAP_ID_DSN, 1, 0x200))
    with pytest.raises(ConfigSpaceError, match="empty header") as e:
        c.cs().extended_capabilities
    assert e.value.offset == 0x100


def test_extended_overlap():
    c = pcie_cfg().ext((0x100, R.EXT_CAP_ID_ERR, 2), (0x120, R.EXT_CAP_ID_DSN, 1))   # AER needs 0x2c
    with pytest.raises(ConfigSpaceError, match="overlaps"):
        c.cs().extended_capabilities


def test_null_head_is_kept():
    c = pcie_cfg().ext((0x100, 0, 0), (0x140, R.EXT_CAP_ID_DSN, 1))
    null, dsn = c.cs().extended_capabilities
    assert (null.id, null.name, null.next) == (0, "Null", 0x140) and dsn.id == R.EXT_CAP_ID_DSN


# ---- lengths ---------------------------------------------------------------------------------
@pytest.mark.parametrize("n", [0, 63, 100, 255, 300, 4095])
def test_bad_lengths_name_the_length(n):
    with pytest.raises(ConfigSpaceError, match=f"{n} bytes"):
        ConfigSpace(bytes(n))


def test_longer_than_4096():
    with pytest.raises(ConfigSpaceError, match="4097 bytes"):
        ConfigSpace(bytes(4097), allow_short=True)


def test_short_sysfs_read_decodes_header_only():
    full = Cfg().caps((0x40, R.CAP_ID_PM)).w32(0x10, 0xFE000000)
    cs = ConfigSpace(bytes(full.b[:64]), allow_short=True, source="0000:00:04.0")
    assert cs.vendor_id == 0x1234 and [b.address for b in cs.bars] == [0xFE000000]
    with pytest.raises(ConfigSpaceError, match="64 bytes available") as e:
        cs.capabilities
    assert e.value.offset == 0x40 and "0000:00:04.0" in str(e.value)
    d = cs.to_dict()    # strict: a header-only read is not an error, the lists are just absent
    assert d["header_only"] and d["capabilities"] is None and d["extended_capabilities"] is None
    assert d["bars"][0]["address"] == 0xFE000000
    assert ConfigSpace(bytes(full.b)).to_dict()["header_only"] is False
    with pytest.raises(ConfigSpaceError, match="shorter than the 64-byte"):
        ConfigSpace(bytes(32), allow_short=True)


# ---- output ----------------------------------------------------------------------------------------
def test_to_dict_is_json_and_keeps_raw():
    cs = ConfigSpace.from_file(FIXTURES / "e1000e.bin")
    d = json.loads(json.dumps(cs.to_dict()))
    assert bytes.fromhex(d["raw"]) == cs.raw
    assert [c["offset"] for c in d["capabilities"]] == [0xC8, 0xD0, 0xE0, 0xA0]
    assert [c["name"] for c in d["extended_capabilities"]] == ["Advanced Error Reporting", "Device Serial Number"]
    assert d["extended_capabilities"][1]["fields"]["serial_str"] == "52-54-00-ff-ff-12-34-56"


def test_lspci_dump_format():
    text = lspci_dump(bytes(range(256)) * 16, "01:00.0")
    lines = text.splitlines()
    assert lines[0].startswith("01:00.0 ") and len(lines) == 1 + 256
    assert lines[1] == "000: " + " ".join(f"{i:02x}" for i in range(16))
    assert lines[-1].startswith("ff0: f0 f1")
    assert lspci_dump(bytes(256)).splitlines()[16].startswith("f0: 00")


def test_fixture_nvme_hand_checked():
    """Values read off the raw dump by hand (hexdump of fixtures/config/nvme-rciep.bin)."""
    raw = (FIXTURES / "nvme-rciep.bin").read_bytes()
    cs = ConfigSpace(raw)
    assert (cs.vendor_id, cs.device_id, cs.class_code) == (0x1B36, 0x0010, 0x010802)
    assert struct.unpack_from("<H", raw, 0x42)[0] == 64 and cs.msix.table_size == 65
    assert (cs.msix.table_bir, cs.msix.table_offset, cs.msix.pba_offset) == (0, 0x2000, 0x3000)
    assert cs.pcie.port_type == R.EXP_TYPE_RC_END and cs.pm.power_state_name == "D3hot"
    assert [c.offset for c in cs.capabilities] == [0x40, 0x80, 0x60]
