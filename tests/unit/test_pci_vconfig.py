"""VirtualConfigSpace: masks, W1C, pass-through, BAR/ROM sizing, capability management, state.

After every capability operation the guest-visible bytes are decoded again
with ConfigSpace (walk + decode + overlap checks), so a list left
inconsistent fails here.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from vfio.errors import RegionAccessError
from vfio.pci import regs as R
from vfio.pci.config import ConfigSpace, ConfigSpaceError, bar_size_from_mask
from vfio.pci.vconfig import BarSpec, StateMismatchError, VirtualConfigSpace
from tests.paths import CONFIG_FIXTURES

FIXTURES = Path(CONFIG_FIXTURES)


def base(size=256, header_type=0):
    b = bytearray(size)
    struct.pack_into("<HH", b, 0, 0x1234, 0x11E8)
    b[R.HEADER_TYPE] = header_type
    b[R.INTERRUPT_PIN] = 1
    return b


def guest_view(v: VirtualConfigSpace) -> bytes:
    return b"".join(v.read(o, 4).to_bytes(4, "little") for o in range(0, v.size, 4))


def consistent(v: VirtualConfigSpace) -> ConfigSpace:
    """Decode what the guest sees; lists must walk and agree with the object's own view."""
    cs = ConfigSpace(guest_view(v))
    assert v.guest_bytes() == cs.raw
    assert [(c.offset, c.id) for c in cs.capabilities] == v.capabilities()
    if cs.has_extended_space:
        assert [(c.offset, c.id, c.version) for c in cs.extended_capabilities] == v.extended_capabilities()
    assert bool(cs.status & R.STATUS_CAP_LIST) == bool(v.capabilities())
    return cs


class FakeDevice:
    """A backing: the device's own config bytes, with a log of what reached it."""

    def __init__(self, data):
        self.data = bytearray(data)
        self.writes: list[tuple[int, int, int]] = []
        self.reads = 0

    def passthrough_read(self, offset, size):
        self.reads += 1
        return int.from_bytes(self.data[offset:offset + size], "little")

    def passthrough_write(self, offset, size, value):
        self.writes.append((offset, size, value))
        self.data[offset:offset + size] = value.to_bytes(size, "little")


# ---- header masks ----------------------------------------------------------------------
def test_command_write_mask_and_readonly_ids():
    v = VirtualConfigSpace(base())
    v.write(R.COMMAND, 2, 0xFFFF)
    assert v.read(R.COMMAND, 2) == 0x0547    # IO, MEM, MASTER, PARITY, SERR, INTX_DISABLE
    v.write(R.VENDOR_ID, 4, 0xDEADBEEF)
    assert v.read(R.VENDOR_ID, 4) == 0x11E81234
    v.write(R.INTERRUPT_LINE, 1, 0x0B)
    v.write(R.INTERRUPT_PIN, 1, 0x04)
    assert (v.read(R.INTERRUPT_LINE, 1), v.read(R.INTERRUPT_PIN, 1)) == (0x0B, 1)


def test_status_write_one_to_clear():
    v = VirtualConfigSpace(base())
    v.poke(R.STATUS, 2, R.STATUS_REC_MASTER_ABORT | R.STATUS_DETECTED_PARITY | R.STATUS_INTERRUPT)
    v.write(R.STATUS, 2, 0)                                      # 0 leaves W1C bits alone
    assert v.read(R.STATUS, 2) == R.STATUS_REC_MASTER_ABORT | R.STATUS_DETECTED_PARITY | R.STATUS_INTERRUPT
    v.write(R.STATUS, 2, R.STATUS_REC_MASTER_ABORT | R.STATUS_INTERRUPT)   # interrupt bit is not W1C
    assert v.read(R.STATUS, 2) == R.STATUS_DETECTED_PARITY | R.STATUS_INTERRUPT
    # a dword write to Command+Status: command bits set, status bit cleared in one access
    v.write(R.COMMAND, 4, (R.STATUS_DETECTED_PARITY << 16) | R.COMMAND_MEMORY)
    assert v.read(R.COMMAND, 4) == (R.STATUS_INTERRUPT << 16) | R.COMMAND_MEMORY


@pytest.mark.parametrize("offset,size", [(0, 3), (2, 4), (1, 2), (254, 4), (256, 1), (-1, 1)])
def test_bad_accesses(offset, size):
    v = VirtualConfigSpace(base())
    with pytest.raises(RegionAccessError):
        v.read(offset, size)
    with pytest.raises(RegionAccessError):
        v.write(offset, size, 0)


def test_value_too_wide():
    with pytest.raises(RegionAccessError, match="does not fit"):
        VirtualConfigSpace(base()).write(R.COMMAND, 2, 0x10000)


# ---- BAR and ROM sizing -----------------------------------------------------------------
def test_bar_sizing_all_kinds():
    v = VirtualConfigSpace(base(), bars=[BarSpec(0, "mem32", 0x1000), BarSpec(1, "io", 0x20),
                                         BarSpec(2, "mem64", 1 << 32, prefetchable=True)])
    for off in range(0x10, 0x28, 4):
        v.write(off, 4, 0xFFFFFFFF)
    assert v.read(0x10, 4) == 0xFFFFF000
    assert v.read(0x14, 4) == 0xFFFFFFE1
    assert (v.read(0x18, 4), v.read(0x1C, 4)) == (0x0000000C, 0xFFFFFFFF)   # 4 GiB: low dword has only flags
    assert v.read(0x20, 4) == 0 and v.read(0x24, 4) == 0                    # unimplemented
    cs = ConfigSpace(guest_view(v))
    sizes = {b.index: bar_size_from_mask(b.raw, b.kind) for b in cs.bars}
    assert sizes == {0: 0x1000, 1: 0x20, 2: 1 << 32}
    # the guest programs addresses; they stay virtual
    v.write(0x10, 4, 0xFEB01234)
    v.write(0x18, 4, 0x80000000)
    v.write(0x1C, 4, 0x2)
    # address bits below the size are not writable: 0x8000_0000 is dropped from a 4 GiB BAR
    assert v.bar_address(0) == 0xFEB01000 and v.bar_address(2) == 0x2_0000_0000
    assert v.read(0x10, 4) == 0xFEB01000


def test_bar_sizes_from_mapping_take_kinds_from_initial_bytes():
    b = base()
    struct.pack_into("<IIII", b, 0x10, 0xFE000000, 0xC001, 0xE000000C, 0x1)
    v = VirtualConfigSpace(b, bars={0: 0x100000, 1: 0x40, 2: 0x20000000})
    assert v.bars[2] == BarSpec(2, "mem64", 0x20000000, True)
    # initial addresses are kept (bits below the size dropped)
    assert (v.bar_address(0), v.bar_address(1), v.bar_address(2)) == (0xFE000000, 0xC000, 0x1E0000000)
    with pytest.raises(ConfigSpaceError, match="not implemented"):
        v.bar_address(4)


@pytest.mark.parametrize("spec,msg", [
    (BarSpec(0, "mem32", 0x3000), "power of two"), (BarSpec(0, "io", 512), "power of two"),
    (BarSpec(0, "mem32", 8), "power of two"), (BarSpec(5, "mem64", 0x1000), "does not fit"),
    (BarSpec(0, "mem16", 0x1000), "kind")])
def test_bad_bar_specs(spec, msg):
    with pytest.raises(ConfigSpaceError, match=msg):
        VirtualConfigSpace(base(), bars=[spec])


def test_overlapping_bar_specs():
    with pytest.raises(ConfigSpaceError, match="overlaps"):
        VirtualConfigSpace(base(), bars=[BarSpec(0, "mem64", 0x1000), BarSpec(1, "mem32", 0x1000)])


def test_rom_sizing_and_enable():
    v = VirtualConfigSpace(base(), rom_size=0x10000)
    v.write(R.ROM_ADDRESS, 4, 0xFFFFFFFF)
    assert v.read(R.ROM_ADDRESS, 4) == 0xFFFF0001
    v.write(R.ROM_ADDRESS, 4, 0xFEB00000)
    assert (v.rom_address, v.rom_enabled) == (0xFEB00000, False)
    v.write(R.ROM_ADDRESS, 4, 0xFEB00001)
    assert v.rom_enabled
    no_rom = VirtualConfigSpace(base())
    no_rom.write(R.ROM_ADDRESS, 4, 0xFFFFFFFF)
    assert no_rom.read(R.ROM_ADDRESS, 4) == 0
    with pytest.raises(ConfigSpaceError, match="ROM size"):
        VirtualConfigSpace(base(), rom_size=0x400)


def test_bridge_header_masks():
    v = VirtualConfigSpace(base(header_type=1), bars=[BarSpec(0, "mem32", 0x1000)], rom_size=0x800)
    v.write(R.PRIMARY_BUS, 4, 0x00030100)
    assert v.read(R.PRIMARY_BUS, 4) == 0x00030100
    v.write(R.IO_BASE, 2, 0xFFFF)
    assert v.read(R.IO_BASE, 2) == 0xF0F0
    v.write(R.MEMORY_BASE, 4, 0xFFFFFFFF)
    assert v.read(R.MEMORY_BASE, 4) == 0xFFF0FFF0
    v.write(0x38, 4, 0xFFFFFFFF)
    assert v.read(0x38, 4) == 0xFFFFF801 and v.read(0x30, 4) == 0     # ROM at 0x38 on a bridge
    assert ConfigSpace(guest_view(v)).bridge.secondary_bus == 1


# ---- pass-through -------------------------------------------------------------------------------
def passthrough_pair():
    raw = bytearray((FIXTURES / "e1000e.bin").read_bytes())
    dev = FakeDevice(raw)
    v = VirtualConfigSpace(raw, backing=dev, bars={0: 0x20000, 1: 0x20000, 2: 0x20, 3: 0x4000}, rom_size=0x40000)
    return v, dev


def test_passthrough_reads_and_emulated_bars():
    v, dev = passthrough_pair()
    dev.data[R.COMMAND] = 0x07
    assert v.read(R.COMMAND, 2) & 0xFF == 0x07               # command comes from the device
    v.write(0x10, 4, 0xFFFFFFFF)
    assert v.read(0x10, 4) == 0xFFFE0000 and not dev.writes    # BAR sizing never reaches the device
    dev.data[0x10:0x14] = b"\x11\x22\x33\x44"
    assert v.read(0x10, 4) == 0xFFFE0000                        # and device BAR values never show
    v.write(R.COMMAND, 2, 0x0406)
    assert dev.writes == [(R.COMMAND, 2, 0x0406)]


def test_passthrough_mixed_access_keeps_device_value_for_emulated_bits():
    v, dev = passthrough_pair()
    dev.data[R.STATUS] &= ~R.STATUS_CAP_LIST & 0xFF            # the device's own bit differs from ours
    v.write(R.COMMAND, 4, 0x0000_0002)
    off, size, value = dev.writes[-1]
    assert (off, size) == (R.COMMAND, 4) and value & 0xFFFF == 0x0002
    assert value >> 16 & R.STATUS_CAP_LIST == 0                 # device's value, not the guest's write
    assert v.read(R.STATUS, 2) & R.STATUS_CAP_LIST                # the guest still sees the list


def test_passthrough_rmw_with_partial_write_mask_and_w1c():
    v, dev = passthrough_pair()
    pm = v.find_capability(R.CAP_ID_PM)
    ctrl = pm + R.PM_CTRL
    dev.data[ctrl:ctrl + 2] = struct.pack("<H", R.PM_CTRL_PME_STATUS | R.PM_CTRL_NO_SOFT_RESET | 3)
    v.write(ctrl, 2, 0)                 # D0, PME status written 0: must not clear it on the device
    assert dev.writes[-1] == (ctrl, 2, R.PM_CTRL_NO_SOFT_RESET)
    assert dev.data[ctrl:ctrl + 2] == struct.pack("<H", R.PM_CTRL_NO_SOFT_RESET)  # (fake device has no W1C)
    v.write(ctrl, 2, R.PM_CTRL_PME_STATUS | 0x00F0)   # 1 to PME status is forwarded; RO bits keep device value
    assert dev.writes[-1] == (ctrl, 2, R.PM_CTRL_PME_STATUS | R.PM_CTRL_NO_SOFT_RESET)


def test_passthrough_msi_is_emulated():
    v, dev = passthrough_pair()
    msi = v.find_capability(R.CAP_ID_MSI)
    v.write(msi + R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE)
    assert not dev.writes and v.read(msi + R.MSI_FLAGS, 2) & R.MSI_FLAGS_ENABLE


def test_passthrough_only_with_backing():
    v = VirtualConfigSpace(base())
    with pytest.raises(ConfigSpaceError, match="backing"):
        v.set_masks(R.COMMAND, 2, emulated=0)


def test_watchers_fire_on_overlap_only():
    v = VirtualConfigSpace(base(), bars=[BarSpec(0, "mem32", 0x1000)])
    seen = []
    v.watch(R.COMMAND, 2, lambda o, s, val: seen.append(("cmd", o, s, val)))
    v.watch(0x10, 4, lambda o, s, val: seen.append(("bar0", o, s, val)))
    v.write(R.COMMAND, 4, 0x2)
    v.write(0x10, 2, 0x1000)
    v.write(R.CACHE_LINE_SIZE, 1, 0x10)
    assert seen == [("cmd", 4, 4, 2), ("bar0", 0x10, 2, 0x1000)]


def test_reset_restores_power_on_values():
    v = VirtualConfigSpace(base(), bars=[BarSpec(0, "mem32", 0x1000)])
    before = guest_view(v)
    v.write(R.COMMAND, 2, 0x7)
    v.write(0x10, 4, 0xFEB00000)
    v.write(R.INTERRUPT_LINE, 1, 5)
    assert guest_view(v) != before
    v.reset()
    assert guest_view(v) == before


# ---- capabilities ------------------------------------------------------------------------------
def test_add_find_delete_standard():
    v = VirtualConfigSpace(base())
    assert v.capabilities() == [] and not v.read(R.STATUS, 2) & R.STATUS_CAP_LIST
    pm = v.add_capability(R.CAP_ID_PM, 8)
    msi = v.add_capability(R.CAP_ID_MSI, 24, data=bytes([0, 0]) + struct.pack("<H", 0x0180) + bytes(20))
    vnd = v.add_capability(R.CAP_ID_VNDR, 12, data=bytes([0, 0, 12]) + bytes(9))
    assert (pm, msi, vnd) == (0x40, 0x48, 0x60)                 # first fit, dword aligned, in add order
    cs = consistent(v)
    assert [c.offset for c in cs.capabilities] == [0x40, 0x48, 0x60]
    assert cs.msi.is_64bit and cs.msi.per_vector_masking and cs.find(R.CAP_ID_VNDR).cap_length == 12
    assert v.find_capability(R.CAP_ID_MSI) == 0x48 and v.find_capability(R.CAP_ID_MSIX) is None
    # default MSI masks: enable writable, message control RO bits not
    v.write(msi + R.MSI_FLAGS, 2, 0xFFFF)
    assert v.read(msi + R.MSI_FLAGS, 2) == 0x0180 | R.MSI_FLAGS_ENABLE | R.MSI_FLAGS_QSIZE
    v.delete_capability(msi)                                     # middle of the list
    assert v.capabilities() == [(0x40, 1), (0x60, 9)] and v.read(0x48, 4) == 0
    consistent(v)
    again = v.add_capability(R.CAP_ID_MSIX, 12)                  # freed bytes are reused
    assert again == 0x48
    assert v.capabilities() == [(0x40, 1), (0x60, 9), (0x48, 0x11)]
    consistent(v)
    for off, _ in v.capabilities():
        v.delete_capability(off)
        consistent(v)
    assert v.capabilities() == [] and not v.read(R.STATUS, 2) & R.STATUS_CAP_LIST
    assert v.read(R.CAPABILITY_LIST, 1) == 0


def test_add_capability_placement_errors():
    v = VirtualConfigSpace(base())
    v.add_capability(R.CAP_ID_PM, 8, offset=0x80)
    with pytest.raises(ConfigSpaceError, match="overlaps") as e:
        v.add_capability(R.CAP_ID_MSIX, 12, offset=0x7C)
    assert e.value.offset == 0x7C
    with pytest.raises(ConfigSpaceError, match="dword aligned"):
        v.add_capability(R.CAP_ID_MSIX, 12, offset=0x42)
    with pytest.raises(ConfigSpaceError, match="dword aligned"):
        v.add_capability(R.CAP_ID_MSIX, 12, offset=0x3C)          # into the header
    with pytest.raises(ConfigSpaceError, match="needs 24 bytes"):
        v.add_capability(R.CAP_ID_MSI, 10, data=bytes(2) + struct.pack("<H", 0x0180) + bytes(6))
    with pytest.raises(ConfigSpaceError, match="no extended config space"):
        v.add_capability(R.EXT_CAP_ID_DSN, 12, extended=True)
    v.reserve(0x40, 0x40)
    v.reserve(0x88, 0x78)
    with pytest.raises(ConfigSpaceError, match="no free"):
        v.add_capability(R.CAP_ID_MSIX, 12)
    consistent(v)


def test_hide_keeps_bytes_reserved_and_invisible():
    raw = (FIXTURES / "virtio-net-pcie.bin").read_bytes()
    v = VirtualConfigSpace(raw)
    before = [o for o, _ in v.capabilities()]
    pm = v.find_capability(R.CAP_ID_PM)
    v.hide_capability(pm)
    assert pm not in [o for o, _ in v.capabilities()] and v.read(pm, 4) == 0
    assert v.hidden_capabilities() == [(pm, R.CAP_ID_PM, False)]
    assert [o for o, _ in v.capabilities()] == [o for o in before if o != pm]
    with pytest.raises(ConfigSpaceError, match="overlaps"):
        v.add_capability(R.CAP_ID_VNDR, 4, offset=pm, data=bytes([0, 0, 4, 0]))
    with pytest.raises(ConfigSpaceError, match="no visible capability"):
        v.delete_capability(pm)
    consistent(v)
    head = v.capabilities()[0][0]
    v.hide_capability(head)                                       # the head: 0x34 moves on
    assert v.read(R.CAPABILITY_LIST, 1) == v.capabilities()[0][0]
    consistent(v)


def test_restrict_capabilities_exposes_only_the_chosen_set():
    v = VirtualConfigSpace((FIXTURES / "pcie-root-port.bin").read_bytes())
    v.restrict_capabilities(keep={R.CAP_ID_EXP, R.CAP_ID_MSIX}, keep_extended={R.EXT_CAP_ID_ACS})
    assert sorted(c for _, c in v.capabilities()) == [R.CAP_ID_EXP, R.CAP_ID_MSIX]
    assert v.extended_capabilities() == [(0x100, 0, 0), (0x148, R.EXT_CAP_ID_ACS, 1)]   # AER at 0x100 hidden
    cs = consistent(v)
    assert cs.extended_capabilities[0].name == "Null" and cs.find_ext(R.EXT_CAP_ID_ERR) is None
    assert v.find_capability(R.EXT_CAP_ID_ACS, extended=True) == 0x148
    assert v.find_capability(0, extended=True) is None


def test_extended_head_delete_and_rebuild():
    v = VirtualConfigSpace((FIXTURES / "e1000e.bin").read_bytes())
    assert v.extended_capabilities() == [(0x100, R.EXT_CAP_ID_ERR, 2), (0x140, R.EXT_CAP_ID_DSN, 1)]
    v.delete_capability(0x100)                    # head: a null header keeps the list reachable
    assert v.extended_capabilities() == [(0x100, 0, 0), (0x140, R.EXT_CAP_ID_DSN, 1)]
    consistent(v)
    ats = v.add_capability(R.EXT_CAP_ID_ATS, 8, extended=True)
    assert ats == 0x104                           # AER's freed bytes after the 4-byte null header
    assert v.extended_capabilities()[-1] == (0x104, R.EXT_CAP_ID_ATS, 1)
    consistent(v)
    v.delete_capability(0x140)
    v.delete_capability(ats)                      # null head pointing nowhere collapses to an empty list
    assert v.extended_capabilities() == [] and v.read(0x100, 4) == 0
    consistent(v)
    first = v.add_capability(R.EXT_CAP_ID_DSN, 12, extended=True, data=bytes(4) + struct.pack("<Q", 0xABCD))
    assert first == 0x100 and v.extended_capabilities() == [(0x100, R.EXT_CAP_ID_DSN, 1)]
    assert consistent(v).find_ext(R.EXT_CAP_ID_DSN).serial == 0xABCD
    with pytest.raises(ConfigSpaceError, match="no visible extended capability"):
        v.delete_capability(0x140)


def test_extended_add_when_0x100_is_hidden():
    v = VirtualConfigSpace((FIXTURES / "virtio-blk-ats.bin").read_bytes())
    assert v.extended_capabilities() == [(0x100, R.EXT_CAP_ID_ATS, 1)]
    v.hide_capability(0x100)
    assert v.extended_capabilities() == [] and v.hidden_capabilities() == [(0x100, R.EXT_CAP_ID_ATS, True)]
    off = v.add_capability(R.EXT_CAP_ID_DSN, 12, extended=True)
    assert off == 0x108
    assert v.extended_capabilities() == [(0x100, 0, 0), (0x108, R.EXT_CAP_ID_DSN, 1)]
    consistent(v)


def test_standard_and_extended_walks_after_every_step_on_every_fixture():
    """Hide then delete every capability of every fixture, checking the lists after each step."""
    for path in sorted(FIXTURES.glob("*.bin")):
        v = VirtualConfigSpace(path.read_bytes(), source=path.name)
        caps, ext = v.capabilities(), v.extended_capabilities()
        for i, (off, _cid) in enumerate(caps):
            (v.hide_capability if i % 2 else v.delete_capability)(off)
            consistent(v)
        for i, (off, cid, _ver) in enumerate(ext):
            if cid and (off, cid, _ver) in v.extended_capabilities():
                (v.hide_capability if i % 2 else v.delete_capability)(off)
                consistent(v)
        assert v.capabilities() == [] and v.extended_capabilities() == [], path.name


# ---- state -----------------------------------------------------------------------------------------
def make_for_state():
    raw = (FIXTURES / "nvme-pcie.bin").read_bytes()
    v = VirtualConfigSpace(raw, bars={0: 0x4000})
    v.hide_capability(v.find_capability(R.CAP_ID_PM))
    return v


def test_state_round_trip_through_json():
    v = make_for_state()
    v.write(R.COMMAND, 2, 0x0006)
    v.write(0x10, 4, 0xFE400000)
    msix = v.find_capability(R.CAP_ID_MSIX)
    v.write(msix + R.MSIX_FLAGS, 2, R.MSIX_FLAGS_ENABLE)
    state = json.loads(json.dumps(v.get_state()))
    assert state["format"] == "vfio.pci.vconfig" and state["version"] == 1
    w = make_for_state()
    seen = []
    w.watch(0, 256, lambda *a: seen.append(a))
    assert guest_view(w) != guest_view(v)
    w.set_state(state)
    assert guest_view(w) == guest_view(v) and not seen          # state accessors call no watchers
    assert w.bar_address(0) == 0xFE400000


def test_state_refused_for_other_capability_set():
    state = make_for_state().get_state()
    other = VirtualConfigSpace((FIXTURES / "nvme-pcie.bin").read_bytes(), bars={0: 0x4000})   # PM not hidden
    before = guest_view(other)
    with pytest.raises(StateMismatchError, match="capabilities"):
        other.set_state(state)
    assert guest_view(other) == before                           # nothing loaded


def test_state_refused_for_other_bars_version_format_and_bytes():
    state = make_for_state().get_state()
    other_bars = VirtualConfigSpace((FIXTURES / "nvme-pcie.bin").read_bytes(), bars={0: 0x8000})
    other_bars.hide_capability(other_bars.find_capability(R.CAP_ID_PM))
    with pytest.raises(StateMismatchError, match="bars"):
        other_bars.set_state(state)
    v = make_for_state()
    with pytest.raises(StateMismatchError, match="version"):
        v.set_state(dict(state, version=2))
    with pytest.raises(StateMismatchError, match="format"):
        v.set_state(dict(state, format="something else"))
    with pytest.raises(StateMismatchError, match="config"):
        v.set_state(dict(state, config="zz"))
    bad = bytearray.fromhex(state["config"])
    bad[R.CAPABILITY_LIST] = 0x80                                # bytes disagree with the layout
    with pytest.raises(StateMismatchError, match="capability lists"):
        v.set_state(dict(state, config=bad.hex()))
