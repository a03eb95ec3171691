"""The one PCI register layer: typed capability views, BAR kinds and masks, declared emulated
registers, and replay's config writes through the virtual config space's masks.

Expected values are worked out from the PCI spec's layouts and the kernel's vfio_pci_config.c
(Linux 6.12), not taken from the code under test.
"""

from __future__ import annotations

import errno
import json
import struct
from pathlib import Path

import pytest

from vfio import uapi
from vfio.errors import InvalidValue, VfioError
from vfio.pci import regs as R
from vfio.pci.caps import MsiCap, MsixCap, PcieCap, PmCap, Reg
from vfio.pci.config import (BarKind, ConfigSpace, KernelResource, MsiCapability, MsixCapability, PcieCapability,
                             PmCapability, bar_size_from_mask, bar_write_mask, rom_write_mask)
from vfio.pci.passthrough import IrqMode
from vfio.pci.vconfig import BarSpec, VirtualConfigSpace
from vfio.record import format as F
from vfio.record.replay import open_replay

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "config"


# ---- typed views ----------------------------------------------------------------------------------
def test_msi_view_layout_follows_its_control_bits():
    # (64-bit, maskable) -> (data, mask, pending, size), PCI 3.0 figure 6-9
    for ctl, layout in ((0, (0x08, None, None, 10)), (R.MSI_FLAGS_64BIT, (0x0C, None, None, 14)),
                        (R.MSI_FLAGS_MASKBIT, (0x08, 0x0C, 0x10, 20)),
                        (R.MSI_FLAGS_64BIT | R.MSI_FLAGS_MASKBIT, (0x0C, 0x10, 0x14, 24))):
        buf = bytearray(32)
        struct.pack_into("<H", buf, 0x12, ctl | (3 << 1) | (2 << 4))
        m = MsiCap(buf, 0x10)
        assert (m.data_offset, m.mask_offset, m.pending_offset, m.size) == layout
        assert (m.vectors_capable, m.vectors_enabled, m.enabled) == (8, 4, False)


def test_views_read_live_registers_through_a_reader():
    regs = {0x72: R.MSIX_FLAGS_ENABLE | 7, 0x74: 0x2000 | 4, 0x78: 0x3000 | 4}
    x = MsixCap(lambda off, size: regs.get(off, 0), 0x70)
    assert (x.table_size, x.table_bir, x.table_offset, x.pba_bir, x.pba_offset) == (8, 4, 0x2000, 4, 0x3000)
    assert (x.table_bytes, x.pba_bytes, x.enabled, x.function_mask) == (128, 8, True, False)
    regs[0x72] |= R.MSIX_FLAGS_MASKALL
    assert x.function_mask                      # never cached


def test_pcie_view_optional_registers():
    buf = bytearray(0x40)
    struct.pack_into("<H", buf, 2, 1 | (R.EXP_TYPE_ENDPOINT << 4))     # v1 endpoint: ends after the link
    e = PcieCap(buf)
    assert (e.size, e.has_link(), e.has_slot(), e.has_v2()) == (R.CAP_EXP_ENDPOINT_SIZEOF_V1, True, False, False)
    with pytest.raises(AttributeError):
        e.devctl2
    struct.pack_into("<H", buf, 2, 2 | (R.EXP_TYPE_ROOT_PORT << 4) | R.EXP_FLAGS_SLOT)
    assert (e.size, e.has_root(), e.has_slot(), e.port_type_name) == (0x3C, True, True, "Root Port")


def _fixture_caps():
    for p in sorted(FIXTURES.glob("*.bin")):
        cs = ConfigSpace(p.read_bytes(), source=p.name)
        for c in cs.capabilities:
            yield p.name, c


def test_every_view_reads_the_fields_the_decoder_prints():
    seen = set()
    for name, c in _fixture_caps():
        typed = {R.CAP_ID_MSI: MsiCapability, R.CAP_ID_MSIX: MsixCapability, R.CAP_ID_PM: PmCapability,
                 R.CAP_ID_EXP: PcieCapability}.get(c.id)
        if typed is None:
            continue
        assert type(c) is typed, name
        seen.add(c.id)
        view = {R.CAP_ID_MSI: MsiCap, R.CAP_ID_MSIX: MsixCap, R.CAP_ID_PM: PmCap, R.CAP_ID_EXP: PcieCap}[c.id]
        # the view over the whole config space at the capability's offset agrees with the decoder
        v = view(ConfigSpace(FIXTURES.joinpath(name).read_bytes()).raw, c.offset)
        assert v.size == len(c.raw), name
        names = view.FIELDS or [k for k in c.fields if isinstance(getattr(type(v), k, None), (property, Reg))]
        assert len(names) >= (12 if c.id == R.CAP_ID_EXP else len(view.FIELDS)), name
        for field in names:
            assert getattr(v, field) == c.fields[field] == getattr(c, field), (name, field)
    assert seen == {R.CAP_ID_MSI, R.CAP_ID_MSIX, R.CAP_ID_PM, R.CAP_ID_EXP}


# ---- BAR kinds and masks ------------------------------------------------------------------------
def test_bar_kind_is_an_enum_that_compares_and_prints_as_before():
    assert BarKind("mem64") is BarKind.MEM64 and BarKind.IO == "io" and f"{BarKind.MEM32}" == "mem32"
    assert json.dumps({"kind": BarKind.MEM64}) == '{"kind": "mem64"}'
    kr = KernelResource(0, 0xFE000000, 0xFE003FFF, R.IORESOURCE_MEM | R.IORESOURCE_MEM_64)
    assert kr.kind is BarKind.MEM64
    cs = ConfigSpace(FIXTURES.joinpath("nvme-pcie.bin").read_bytes())
    assert all(isinstance(b.kind, BarKind) for b in cs.bars) and cs.bars
    assert all(isinstance(b.to_dict()["kind"], str) and type(b.to_dict()["kind"]) is str for b in cs.bars)
    assert BarSpec(0, "io", 32).kind is BarKind.IO
    assert IrqMode("msix") is IrqMode.MSIX and IrqMode.NONE == "none" and f"{IrqMode.INTX}" == "intx"


@pytest.mark.parametrize("kind", list(BarKind))
def test_bar_write_mask_and_its_inverse_round_trip(kind):
    lo, hi = kind.size_limits
    size = lo
    while size <= hi:
        mask = bar_write_mask(kind, size)
        readback = mask | kind.flag_bits(prefetchable=kind is not BarKind.IO)
        assert bar_size_from_mask(readback, kind) == size
        assert bar_size_from_mask(readback, kind.value) == size
        size <<= 1
    assert bar_write_mask(kind, 0) == 0
    with pytest.raises(InvalidValue):
        bar_write_mask(kind, 3 * lo)


def test_rom_write_mask():
    assert rom_write_mask(0) == 0
    assert rom_write_mask(0x8000) == 0xFFFF8001
    assert rom_write_mask(0x800) == 0xFFFFF801
    for bad in (0x400, 0x1800):
        with pytest.raises(InvalidValue):
            rom_write_mask(bad)


def test_vconfig_bar_sizing_uses_the_same_masks():
    cfg = bytearray(256)
    struct.pack_into("<IIII", cfg, 0x10, 0x8, 0x4, 0, 0x1)     # mem32 pref, mem64, (upper), io
    v = VirtualConfigSpace(cfg, bars=[BarSpec(0, "mem32", 0x1000, True), BarSpec(1, "mem64", 1 << 33),
                                      BarSpec(3, "io", 0x40)], rom_size=0x10000)
    for off in range(0x10, 0x20, 4):
        v.write(off, 4, 0xFFFFFFFF)
    v.write(0x30, 4, 0xFFFFFFFF)
    assert v.read(0x10, 4) == 0xFFFFF008
    assert v.read(0x14, 4) | v.read(0x18, 4) << 32 == bar_write_mask(BarKind.MEM64, 1 << 33) | 0x4
    assert v.read(0x1C, 4) == 0xFFFFFFC1 and v.read(0x30, 4) == 0xFFFF0001


# ---- emulated registers declared in one call ----------------------------------------------------
class _Device:
    def __init__(self, cfg):
        self.cfg = bytearray(cfg)
        self.writes = []

    def passthrough_read(self, offset, size):
        return int.from_bytes(self.cfg[offset:offset + size], "little")

    def passthrough_write(self, offset, size, value):
        self.writes.append((offset, size, value))


def _msix_config():
    cfg = bytearray(256)
    struct.pack_into("<HH", cfg, 0, 0x1234, 0x5678)
    struct.pack_into("<H", cfg, R.STATUS, R.STATUS_CAP_LIST)
    struct.pack_into("<I", cfg, 0x10, 0)
    cfg[R.CAPABILITY_LIST] = 0x40
    cfg[0x40:0x42] = bytes([R.CAP_ID_MSIX, 0])
    struct.pack_into("<HII", cfg, 0x42, 7, 0x2000, 0x3000)
    return cfg


def test_emulated_msix_registers_are_read_only_but_for_control():
    """The whole MSI-X capability is the VMM's: a guest cannot move the table (Table/PBA offset
    registers are read-only per PCI 3.0 6.8.2.4), only Enable and Function Mask take writes,
    and nothing reaches the device."""
    dev = _Device(_msix_config())
    v = VirtualConfigSpace(dev.cfg, bars={0: 0x4000}, backing=dev)
    v.write(0x44, 4, 0xFFFFFFFF)
    v.write(0x42, 2, 0xFFFF)
    assert v.read(0x44, 4) == 0x2000
    assert v.read(0x42, 2) == R.MSIX_FLAGS_ENABLE | R.MSIX_FLAGS_MASKALL | 7
    assert dev.writes == []


def test_declaring_a_register_sets_value_write_w1c_and_emulated_together():
    v = VirtualConfigSpace(_msix_config(), backing=_Device(_msix_config()))
    v._emulated(0x80, 2, value=0x1734, write=0x00FF, w1c=0x0F00)
    assert (v.peek(0x80, 2), v.write_mask[0x80:0x82], v.w1c_mask[0x80:0x82], v.emulated_mask[0x80:0x82]) == \
        (0x1734, b"\xff\x00", b"\x00\x0f", b"\xff\xff")
    v.write(0x80, 2, 0x0556)
    assert v.read(0x80, 2) == 0x1256        # low byte written, bits 8 and 10 cleared (W1C), the rest kept


def test_status_error_bits_are_write_1_to_clear():
    cfg = _msix_config()
    struct.pack_into("<H", cfg, R.STATUS, R.STATUS_CAP_LIST | R.STATUS_REC_MASTER_ABORT | R.STATUS_DETECTED_PARITY)
    v = VirtualConfigSpace(cfg)
    v.write(R.STATUS, 2, R.STATUS_REC_MASTER_ABORT | R.STATUS_CAP_LIST)
    assert v.read(R.STATUS, 2) == R.STATUS_CAP_LIST | R.STATUS_DETECTED_PARITY
    v.write(R.STATUS, 2, 0)
    assert v.read(R.STATUS, 2) == R.STATUS_CAP_LIST | R.STATUS_DETECTED_PARITY


# ---- replay: config writes through the virtual config space ----------------------------------------
def _record_config() -> bytearray:
    cfg = bytearray(4096)
    struct.pack_into("<HHHH", cfg, 0, 0x1B36, 0x0010, 0x0006, R.STATUS_CAP_LIST | R.STATUS_REC_MASTER_ABORT)
    struct.pack_into("<I", cfg, 0x10, 0xFE000004)                          # BAR0 mem64, 16 KiB
    cfg[R.CAPABILITY_LIST] = 0x40
    cfg[0x40:0x42] = bytes([R.CAP_ID_PM, 0x50])
    struct.pack_into("<HH", cfg, 0x42, 3, R.PM_CTRL_PME_STATUS)
    cfg[0x50:0x52] = bytes([R.CAP_ID_MSI, 0x70])
    struct.pack_into("<H", cfg, 0x52, R.MSI_FLAGS_64BIT | R.MSI_FLAGS_MASKBIT | (2 << 1))
    cfg[0x70:0x72] = bytes([R.CAP_ID_MSIX, 0x80])
    struct.pack_into("<HII", cfg, 0x72, 3, 0x2000, 0x3000)
    cfg[0x80:0x82] = bytes([R.CAP_ID_EXP, 0xC0])
    struct.pack_into("<H", cfg, 0x82, 2 | (R.EXP_TYPE_ENDPOINT << 4))            # 0x3c bytes
    struct.pack_into("<H", cfg, 0x80 + R.EXP_DEVSTA, R.EXP_DEVSTA_CED)
    cfg[0xC0:0xC4] = bytes([R.CAP_ID_VNDR, 0, 8, 0])
    struct.pack_into("<I", cfg, 0x100, R.ext_cap_header(R.EXT_CAP_ID_ERR, 2, 0x140))
    struct.pack_into("<I", cfg, 0x140, R.ext_cap_header(R.EXT_CAP_ID_ATS, 1, 0))
    return cfg


def _record(cfg: bytes) -> F.DeviceRecord:
    rw, rwm = 3, 7
    return F.DeviceRecord([
        F.PciInfo(0, 0, 4, 0),
        F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI, 9, 5),
        F.Region(0, rwm, 0, 0x4000, 0, [F.RegionInfo(rwm)]),
        F.Region(7, rw, 7 << 40, len(cfg), 0, [F.PciConfigSpace(), F.RegionInfo(rw), F.RegionData(0, bytes(cfg))]),
        F.Interrupt(1, 0x9, 4),
    ])


WRITES = [(R.COMMAND, 2, 0xFFFF), (R.STATUS, 2, 0xFFFF), (0x10, 4, 0xFFFFFFFF), (0x14, 4, 0xFFFFFFFF),
          (0x40, 4, 0xFFFFFFFF), (0x44, 2, 0xFFFF), (0x52, 2, 0xFFFF), (0x54, 4, 0xFFFFFFFF), (0x58, 4, 1),
          (0x5C, 2, 0x4041), (0x60, 4, 0xF), (0x64, 4, 0xF), (0x72, 2, 0xFFFF), (0x74, 4, 0xFFFFFFFF),
          (0x80 + R.EXP_DEVCTL, 2, 0xFFFF), (0x80 + R.EXP_DEVSTA, 2, 0xFFFF), (0x80 + R.EXP_LNKCTL, 2, 0xFFFF),
          (0x80 + R.EXP_DEVCTL2, 2, 0xFFFF), (0xC4, 4, 0xDEADBEEF), (0xD0, 4, 0x12345678),
          (0x100, 4, 0xFFFFFFFF), (0x100 + R.ERR_UNCOR_MASK, 4, 0xFFFFFFFF), (0x144, 4, 0xFFFFFFFF),
          (0x200, 1, 0x5A)]


def test_replay_and_the_virtual_config_space_agree_on_a_write_sequence():
    cfg = _record_config()
    dev = open_replay(_record(cfg))
    try:
        v = VirtualConfigSpace.vfio_pci_user(cfg, bars={0: 0x4000})
        for off, size, value in WRITES:
            dev.backend.pwrite((7 << 40) + off, value.to_bytes(size, "little"))
            v.write(off, size, value)
        got = dev.backend.pread(7 << 40, 4096)
    finally:
        dev.close()
    assert got == bytes(v.guest_bytes())
    rd = lambda off, n: int.from_bytes(got[off:off + n], "little")     # noqa: E731
    # what the kernel's vfio-pci does with each (vfio_pci_config.c):
    assert rd(R.COMMAND, 2) == 0x07FF                                   # every defined bit to the device
    assert rd(R.STATUS, 2) == R.STATUS_CAP_LIST | R.STATUS_REC_MASTER_ABORT   # NO_WRITE: not cleared
    assert rd(0x10, 8) == 0xFFFFFFFFFFFFC004                           # 16 KiB 64-bit BAR sizing
    assert rd(0x40, 2) == (R.CAP_ID_PM | 0x50 << 8)                     # list is virtualised
    assert rd(0x44, 2) == 3 | R.PM_CTRL_DATA_SEL_MASK | R.PM_CTRL_PME_STATUS   # state written, PME bits not
    assert rd(0x52, 2) == R.MSI_FLAGS_64BIT | R.MSI_FLAGS_MASKBIT | (2 << 1)   # enabled via SET_IRQS only
    assert (rd(0x54, 4), rd(0x58, 4), rd(0x5C, 2), rd(0x60, 4)) == (0xFFFFFFFC, 1, 0x4041, 0xF)
    assert rd(0x64, 4) == 0                                             # pending bits are read-only
    assert (rd(0x72, 2), rd(0x74, 4)) == (3, 0x2000)                    # MSI-X: no kernel write permission
    assert rd(0x80 + R.EXP_DEVCTL, 2) == 0xFFFF & ~(R.EXP_DEVCTL_PHANTOM | R.EXP_DEVCTL_BCR_FLR)
    assert rd(0x80 + R.EXP_DEVSTA, 2) == R.EXP_DEVSTA_CED                 # not writable through vfio-pci
    assert rd(0x80 + R.EXP_LNKCTL, 2) == 0
    assert rd(0x80 + R.EXP_DEVCTL2, 2) == 0xFFFF & ~R.EXP_DEVCTL2_ARI
    assert rd(0xC4, 4) == 0xDEADBEEF                                    # vendor-specific body: raw
    assert rd(0xD0, 4) == 0x12345678                                    # outside any capability: raw
    assert rd(0x100, 4) == R.ext_cap_header(R.EXT_CAP_ID_ERR, 2, 0x140)
    assert rd(0x100 + R.ERR_UNCOR_MASK, 4) == 0xFFFFFFFF
    assert rd(0x144, 4) == 0                                            # ATS: read-only through vfio-pci
    assert rd(0x200, 1) == 0x5A


def test_replay_refuses_config_writes_over_a_corrupt_capture():
    cfg = _record_config()
    cfg[0x51] = 0x41                                                    # next pointer not dword aligned
    dev = open_replay(_record(cfg))
    try:
        with pytest.raises(VfioError) as e:
            dev.backend.pwrite(7 << 40 | R.COMMAND, b"\x06\x00")
    finally:
        dev.close()
    assert e.value.errno == errno.EIO and "region 7" in str(e.value) and "0x051" in str(e.value)
