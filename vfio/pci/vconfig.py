"""The virtual configuration space: the config space a guest (or a test) sees.

A VMM never hands a guest the device's raw config space.  Some registers must
be virtual -- the BARs (the guest programs its own addresses, which mean
nothing on the host), the ROM BAR, the capability list (the VMM decides which
capabilities the guest sees), MSI/MSI-X (interrupts are set up through
``VFIO_DEVICE_SET_IRQS``, not by the guest's writes reaching the device) --
and the rest can go to the device.  QEMU's hw/vfio/pci.c
(``emulated_config_bits``, ``vfio_add_capabilities``/``vfio_add_ext_cap``,
MSI-X relocation) and cloud-hypervisor's pci crate (``Configuration`` with
per-register writable-bit masks, ``MsixCap``) do this; so does the kernel's own
vfio_pci_config.c one level down.

Model
-----
:class:`VirtualConfigSpace` keeps a byte array (the *virtual copy*) and three
per-byte bit masks over it:

``emulated_mask``
    1 = the bit's value lives in the virtual copy; 0 = it is passed through to
    the device: reads come from ``backing.passthrough_read`` and writes go to
    ``backing.passthrough_write`` (see :class:`ConfigBacking`).  Without a
    backing every bit is emulated.
``write_mask``
    bits a guest write changes.  For emulated bits this is enforced here; for
    passed-through bits it says which bits of the guest's value are forwarded
    (the others are sent as the device's current value, read first --
    the same read-modify-write the kernel's vfio-pci does).
``w1c_mask``
    write-1-to-clear bits (error status bits): writing 1 clears, 0 leaves.
    Emulated W1C bits are cleared here; passed-through ones are forwarded as
    written (so a 0 never clears the device's bit and a 1 does).

An access is ``read(offset, size)`` / ``write(offset, size, value)`` with size
1, 2 or 4, naturally aligned, inside the space, as a guest's config cycles
are; anything else is a :class:`vfio.errors.RegionAccessError`.

Defaults
--------
All-emulated (no backing): PCI-spec writability for the header (Command bits
IO, Memory, Bus Master, Parity, SERR, INTx Disable; Status error bits W1C;
BARs and ROM per their sizes; interrupt line; a bridge's bus numbers and
windows) and for the control registers of PM, MSI, MSI-X, PCIe, AER, ACS and
ATS capabilities; everything else read-only.

With a backing: emulated are the BARs, the ROM BAR, the interrupt line, the
header-type byte, Status.CapList, the capability pointer and every capability
header (ID and next pointer, so the list is ours), the whole MSI and MSI-X
capabilities, and anything added or hidden; the rest is passed through with
every bit forwarded (the device, or the kernel's vfio-pci below us, enforces
its own read-only bits).  :meth:`set_masks` changes any of this.

Each register is declared in one call, as QEMU's ``vfio_add_emulated_word(pos,
val, mask)`` does: ``_emulated(offset, size, value=, write=, w1c=, emulate=)``
sets its virtual value, write and W1C masks and emulated bits together; BAR and
ROM masks come from :func:`vfio.pci.config.bar_write_mask` /
:func:`~vfio.pci.config.rom_write_mask` (the inverse of
:func:`~vfio.pci.config.bar_size_from_mask`), capability layouts from the
typed views of :mod:`vfio.pci.caps`.

:meth:`VirtualConfigSpace.vfio_pci_user` gives the writability the kernel's
vfio-pci gives a user through the VFIO config region instead of a guest's: it
is the config write policy of the replay backend (:mod:`vfio.record.replay`).

BAR sizing
----------
Each implemented BAR has a size (``bars=`` at construction).  Its write mask
is the address bits above the size, so writing all ones reads back
``~(size-1) | flag bits``, the size mask a guest's BAR sizing expects; a
64-bit BAR's upper dword is masked accordingly.  The addresses a guest
programs stay in the virtual copy (:meth:`bar_address`) and never reach the
device.  BAR slots without a size read 0 and ignore writes (unimplemented).
The ROM BAR likewise, with its enable bit writable.

Capabilities
------------
The brief is the 2009 qemu-devel thread on PCI capability routines: add, find
and delete capabilities anywhere in config space, keeping a record of which
bytes are used, and let the user decide which capabilities a device exposes.
:meth:`add_capability` places a capability (first fit, dword aligned, or at
a given offset) and links it at the tail of its list; :meth:`delete_capability`
unlinks it and frees its bytes; :meth:`hide_capability` unlinks it but keeps
its bytes reserved (the device's registers are still there, just invisible);
:meth:`restrict_capabilities` hides everything not in a given set.  The first
extended capability must sit at 0x100, so removing it leaves a null header
(ID 0) there that still points to the rest, as QEMU does.  Every operation
keeps the list walkable (the walk of :mod:`vfio.pci.config` is used to read
it) and the status bit consistent.

State
-----
:meth:`get_state` / :meth:`set_state` save and restore the virtual copy as a
versioned, JSON-ready dict.  They are state accessors: no device access, no
watcher calls.  ``set_state`` refuses state from a device with a different
layout (size, capability set and offsets, hidden capabilities, BARs, ROM size).
The device's own registers (passed-through bits) are not in it: they travel
with the device's migration state.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Protocol

from ..errors import Error, InvalidValue, RegionAccessError
from . import regs as R
from .caps import VIEWS, MsiCap, PcieCap
from .config import (ConfigSpace, ConfigSpaceError, bar_write_mask, rom_write_mask, walk_capabilities,
                     walk_extended_capabilities)
from .regs import BarKind

__all__ = ["ConfigBacking", "BarSpec", "VirtualConfigSpace", "StateMismatchError", "STATE_FORMAT",
           "STATE_VERSION"]

STATE_FORMAT = "vfio.pci.vconfig"
STATE_VERSION = 1


class ConfigBacking(Protocol):
    """Where passed-through config bits live: the device's real config space.

    The passthrough model implements this over the VFIO config region
    (``Region.pread``/``pwrite`` at the config offset).  Both take and return
    little-endian integer values of ``size`` bytes (1, 2 or 4).
    """

    def passthrough_read(self, offset: int, size: int) -> int: ...

    def passthrough_write(self, offset: int, size: int, value: int) -> None: ...


class StateMismatchError(Error, ValueError):
    """Saved state that does not fit this virtual config space (other version or device layout)."""


@dataclass(frozen=True)
class BarSpec:
    """An implemented BAR: slot ``index``, ``kind`` (a :class:`~vfio.pci.regs.BarKind`, or its
    value 'io', 'mem32', 'mem64'), ``size`` in bytes."""
    index: int
    kind: BarKind
    size: int
    prefetchable: bool = False

    def __post_init__(self):
        try:
            object.__setattr__(self, "kind", BarKind(self.kind))
        except ValueError:
            pass    # VirtualConfigSpace refuses it, naming the BAR's offset

    def flag_bits(self) -> int:
        """The read-only low bits of the register (space, type, prefetchable)."""
        return self.kind.flag_bits(self.prefetchable)


@dataclass
class _CapRecord:
    cap_id: int
    offset: int
    size: int
    extended: bool
    version: int = 0
    hidden: bool = False


Watcher = Callable[[int, int, int], None]


class VirtualConfigSpace:
    """A guest-visible config space over ``initial`` bytes (256 or 4096).  See the module docstring.

    ``bars``: BarSpecs, or a mapping slot -> size whose kinds are taken from
    ``initial``.  ``rom_size``: 0 for no ROM, else a power of two >= 2 KiB.
    ``backing``: where passed-through bits go (None: everything emulated).
    """

    def __init__(self, initial: bytes | bytearray, *, bars: Iterable[BarSpec] | Mapping[int, int] | None = None,
                 rom_size: int = 0, backing: ConfigBacking | None = None, source: str | None = None):
        self.source = source or "virtual config space"
        cs = ConfigSpace(initial, source=self.source)   # validates length and both lists
        self.size = len(cs.raw)
        self.header_type = cs.header_type
        if self.header_type not in (R.HEADER_TYPE_NORMAL, R.HEADER_TYPE_BRIDGE):
            raise ConfigSpaceError(f"header type {self.header_type} is not emulated (only 0 and 1)",
                                   R.HEADER_TYPE, self.source)
        self.backing = backing
        self._virt = bytearray(cs.raw)
        self.write_mask = bytearray(self.size)
        self.w1c_mask = bytearray(self.size)
        self.emulated_mask = bytearray(b"\xff" * self.size) if backing is None else bytearray(self.size)
        self._watchers: list[tuple[int, int, Watcher]] = []
        self._caps: dict[int, _CapRecord] = {}
        self._reserved: list[tuple[int, int]] = []
        self.bars = self._bar_specs(cs, bars)
        self.rom_size = rom_size
        self._setup_header()
        for c in cs.capabilities:
            self._caps[c.offset] = _CapRecord(c.id, c.offset, len(c.raw), False)
            self._default_cap_masks(c.id, c.offset, len(c.raw), extended=False)
            self._emulated(c.offset, 2, write=0)  # ID + next: the list is ours
        for c in cs.extended_capabilities:
            self._caps[c.offset] = _CapRecord(c.id, c.offset, len(c.raw), True, c.version)
            self._default_cap_masks(c.id, c.offset, len(c.raw), extended=True)
            self._emulated(c.offset, 4, write=0)
        self._reset_image = bytes(self._virt)

    @classmethod
    def vfio_pci_user(cls, initial: bytes | bytearray, *, bars: Mapping[int, int] | None = None, rom_size: int = 0,
                      source: str | None = None) -> "VirtualConfigSpace":
        """All emulated, with the writability a user of the kernel's vfio-pci meets through the
        VFIO config region (drivers/vfio/pci/vfio_pci_config.c, Linux 6.12): what a replayed
        device's config writes obey.  The device's own read-only bits are taken to be the PCI
        spec's (the defaults above) where the kernel passes a write through to it.

        Where the kernel differs from those defaults: every defined Command bit is passed to the
        device (which ones it implements is not in a capture); Status takes no write (``NO_WRITE``:
        its error bits cannot be cleared through vfio-pci); MSI's Enable and Multiple Message
        Enable are set by VFIO_DEVICE_SET_IRQS, not by config writes (vfio_msi_config_write clears
        Enable and clamps the queue size to what SET_IRQS enabled), so here they keep their value
        while address, data and mask bits take writes; PM's power state is written (the kernel
        sets it) but PME enable/status are virtualised read-only; in the PCI Express capability
        only Device Control (not Phantom Functions; Initiate FLR reads 0) and Device Control 2
        (not ARI forwarding) take writes; VPD address/data are virtualised writable; the bodies
        of vendor-specific capabilities and DVSECs, and every byte outside any capability, are
        passed to the device raw (here: they keep what is written); MSI-X and every other
        capability without a kernel permission table take no write at all."""
        v = cls(initial, bars=bars, rom_size=rom_size, source=source)
        v._vfio_pci_user_masks()
        return v

    def _vfio_pci_user_masks(self) -> None:
        def raw(offset: int, size: int) -> None:      # vfio_raw_config_write: straight to the device
            if size > 0:
                self._emulated(offset, size, write=(1 << (8 * size)) - 1, w1c=0)

        self._emulated(R.COMMAND, 2, write=(R.COMMAND_INTX_DISABLE << 1) - 1)   # bits 10:0, all defined ones
        self._emulated(R.STATUS, 2, write=0, w1c=0)
        covered = bytearray(self.size)
        for rec in list(self._caps.values()):
            off, n = rec.offset, rec.size
            covered[off:off + n] = b"\x01" * n
            if not rec.extended and rec.cap_id == R.CAP_ID_PM:
                self._emulated(off + R.PM_CTRL, 2, write=R.PM_CTRL_STATE_MASK | R.PM_CTRL_DATA_SEL_MASK, w1c=0)
            elif not rec.extended and rec.cap_id == R.CAP_ID_MSI:
                self._emulated(off + MsiCap.control_offset, 2, write=0)
            elif not rec.extended and rec.cap_id == R.CAP_ID_VPD:
                self._emulated(off + R.VPD_ADDR, 2, write=0xFFFF)
                self._emulated(off + R.VPD_DATA, 4, write=0xFFFFFFFF)
            elif not rec.extended and rec.cap_id == R.CAP_ID_EXP:
                self._emulated(off, n, write=0, w1c=0)
                self._emulated(off + R.EXP_DEVCTL, 2, write=0xFFFF & ~(R.EXP_DEVCTL_PHANTOM | R.EXP_DEVCTL_BCR_FLR))
                if PcieCap(self.peek, off).has_v2(n):
                    self._emulated(off + R.EXP_DEVCTL2, 2, write=0xFFFF & ~R.EXP_DEVCTL2_ARI)
            elif not rec.extended and rec.cap_id == R.CAP_ID_VNDR:
                raw(off + R.CAP_FLAGS, n - R.CAP_FLAGS)
            elif rec.extended and rec.cap_id == R.EXT_CAP_ID_ERR:
                pass        # error status W1C, mask/severity/ECRC enables: the device's, as the defaults
            elif rec.extended and rec.cap_id in (R.EXT_CAP_ID_VNDR, R.EXT_CAP_ID_DVSEC):
                raw(off + R.VNDR_HEADER, n - R.VNDR_HEADER)
            else:
                self._emulated(off, n, write=0, w1c=0)
        for i in range(R.STD_HEADER_SIZEOF, self.size):
            if not covered[i]:
                raw(i, 1)

    # ------------------------------------------------------------------ setup
    def _bar_specs(self, cs: ConfigSpace, bars) -> dict[int, BarSpec]:
        nslots = cs.num_bar_slots
        if bars is None:
            specs: list[BarSpec] = []
        elif isinstance(bars, Mapping):
            decoded = {b.index: b for b in ConfigSpace(cs.raw, bar_sizes=bars).bars}
            specs = []
            for i, size in bars.items():
                b = decoded.get(i)
                if b is None:
                    raise ConfigSpaceError(f"BAR{i} has a size but is not a BAR slot start in the initial bytes",
                                           R.BASE_ADDRESS_0 + 4 * i, self.source)
                if size:
                    specs.append(BarSpec(i, b.kind, size, b.prefetchable))
        else:
            specs = list(bars)
        out: dict[int, BarSpec] = {}
        taken: set[int] = set()
        for s in specs:
            off = R.BASE_ADDRESS_0 + 4 * s.index
            if not isinstance(s.kind, BarKind):
                raise ConfigSpaceError(f"BAR{s.index} kind {s.kind!r} is not 'io', 'mem32' or 'mem64'", off, self.source)
            slots = set(range(s.index, s.index + s.kind.slots))
            if max(slots) >= nslots or slots & taken:
                raise ConfigSpaceError(f"BAR{s.index} ({s.kind}) does not fit the {nslots} BAR slots of a type "
                                       f"{cs.header_type} header or overlaps another BAR", off, self.source)
            minimum, limit = s.kind.size_limits
            if s.size < minimum or s.size > limit or s.size & (s.size - 1):
                raise ConfigSpaceError(f"BAR{s.index} size {s.size:#x} is not a power of two in "
                                       f"[{minimum:#x}, {limit:#x}] for a {s.kind} BAR", off, self.source)
            taken |= slots
            out[s.index] = s
        return out

    def _set(self, mask: bytearray, offset: int, size: int, value: int) -> None:
        mask[offset:offset + size] = value.to_bytes(size, "little")

    def _emulated(self, offset: int, size: int, *, value: int | None = None, write: int | None = None,
                  w1c: int | None = None, emulate: bool | int = True) -> None:
        """Declare the register of ``size`` bytes at ``offset``, as QEMU's
        ``vfio_add_emulated_word(pos, val, mask)`` does, in one call: its ``value`` in the
        virtual copy, the bits a guest write changes (``write``) and clears by writing 1
        (``w1c``) -- each None: as it is -- and which bits are emulated: ``True`` all of
        them, an integer those bits, ``False`` none (a register that, with a backing, stays
        passed through: the masks then say what the guest's write may change on the device)."""
        full = (1 << (8 * size)) - 1
        for mask, val in ((self._virt, value), (self.write_mask, write), (self.w1c_mask, w1c)):
            if val is not None:
                self._set(mask, offset, size, val & full)
        bits = full if emulate is True else int(emulate) & full
        if bits:
            old = int.from_bytes(self.emulated_mask[offset:offset + size], "little")
            self._set(self.emulated_mask, offset, size, old | bits)

    def _setup_header(self) -> None:
        initial = bytes(self._virt)
        self._emulated(R.COMMAND, 2, emulate=False, write=R.COMMAND_IO | R.COMMAND_MEMORY | R.COMMAND_MASTER
                       | R.COMMAND_PARITY | R.COMMAND_SERR | R.COMMAND_INTX_DISABLE)
        # the capability-list bit is ours (the list is); the error bits are the device's, W1C
        self._emulated(R.STATUS, 2, w1c=R.STATUS_W1C, emulate=R.STATUS_CAP_LIST)
        self._emulated(R.CACHE_LINE_SIZE, 1, write=0xFF, emulate=False)
        self._emulated(R.LATENCY_TIMER, 1, write=0xFF, emulate=False)
        self._emulated(R.INTERRUPT_LINE, 1, write=0xFF)
        self._emulated(R.HEADER_TYPE, 1)
        self._emulated(R.CAPABILITY_LIST, 1)
        # BARs: every slot is ours; unsized slots read 0 and ignore writes
        nslots = 6 if self.header_type == R.HEADER_TYPE_NORMAL else 2
        self._emulated(R.BASE_ADDRESS_0, 4 * nslots, value=0)
        for s in self.bars.values():
            off, width = R.BASE_ADDRESS_0 + 4 * s.index, s.kind.width
            mask = bar_write_mask(s.kind, s.size)
            self._emulated(off, width, write=mask,
                           value=(int.from_bytes(initial[off:off + width], "little") & mask) | s.flag_bits())
        rom_off = self.rom_offset
        try:
            mask = rom_write_mask(self.rom_size)
        except InvalidValue:
            raise ConfigSpaceError(f"ROM size {self.rom_size:#x} is not a power of two >= 0x800", rom_off,
                                   self.source) from None
        self._emulated(rom_off, 4, write=mask, value=int.from_bytes(initial[rom_off:rom_off + 4], "little") & mask)
        if self.header_type == R.HEADER_TYPE_BRIDGE:
            v = self._virt
            for reg in (R.PRIMARY_BUS, R.SECONDARY_BUS, R.SUBORDINATE_BUS, R.SEC_LATENCY_TIMER):
                self._emulated(reg, 1, write=0xFF, emulate=False)
            self._emulated(R.IO_BASE, 2, write=0xF0F0, emulate=False)          # base and limit, bits 7:4
            self._emulated(R.SEC_STATUS, 2, w1c=R.STATUS_W1C, emulate=False)
            for reg in (R.MEMORY_BASE, R.MEMORY_LIMIT, R.PREF_MEMORY_BASE, R.PREF_MEMORY_LIMIT):
                self._emulated(reg, 2, write=0xFFF0, emulate=False)
            if v[R.PREF_MEMORY_BASE] & R.PREF_RANGE_TYPE_MASK == R.PREF_RANGE_TYPE_64:
                self._emulated(R.PREF_BASE_UPPER32, 8, write=(1 << 64) - 1, emulate=False)
            if v[R.IO_BASE] & R.IO_RANGE_TYPE_MASK == R.IO_RANGE_TYPE_32:
                self._emulated(R.IO_BASE_UPPER16, 4, write=0xFFFFFFFF, emulate=False)
            # Bridge Control: parity, SERR, ISA, VGA, VGA16, master abort, bus reset, fast b2b, discard
            # timers; the discard timer status is W1C
            self._emulated(R.BRIDGE_CONTROL, 2, write=0x0BFF, w1c=0x0400, emulate=False)
        if self.backing is not None:
            # passed-through bits: forward everything the guest writes; the device filters
            for i in range(self.size):
                self.write_mask[i] |= ~self.emulated_mask[i] & 0xFF

    # -------------------------------------------------------- capability defaults
    def _default_cap_masks(self, cap_id: int, off: int, size: int, *, extended: bool) -> None:
        """Spec writability of a known capability's control registers (emulated or not); MSI and
        MSI-X are emulated whole (a guest's interrupt set-up goes through VFIO_DEVICE_SET_IRQS)."""
        if not extended:
            if cap_id == R.CAP_ID_PM:
                self._emulated(off + R.PM_CTRL, 2, emulate=False, w1c=R.PM_CTRL_PME_STATUS,
                               write=R.PM_CTRL_STATE_MASK | R.PM_CTRL_PME_ENABLE | R.PM_CTRL_DATA_SEL_MASK)
            elif cap_id == R.CAP_ID_MSI:
                msi = MsiCap(self.peek, off)
                self._emulated(off, size, write=0, w1c=0)       # read-only but for what follows
                self._emulated(off + msi.control_offset, 2, write=R.MSI_FLAGS_ENABLE | R.MSI_FLAGS_QSIZE)
                self._emulated(off + msi.address_offset, 4, write=R.MSI_ADDRESS_LO_MASK)
                if msi.is_64bit:
                    self._emulated(off + msi.address_hi_offset, 4, write=0xFFFFFFFF)
                self._emulated(off + msi.data_offset, 2, write=0xFFFF)
                if msi.maskable:
                    self._emulated(off + msi.mask_offset, 4, write=(1 << min(msi.vectors_capable, 32)) - 1)
            elif cap_id == R.CAP_ID_MSIX:
                self._emulated(off, size, write=0, w1c=0)
                self._emulated(off + R.MSIX_FLAGS, 2, write=R.MSIX_FLAGS_ENABLE | R.MSIX_FLAGS_MASKALL)
            elif cap_id == R.CAP_ID_EXP:
                exp = PcieCap(self.peek, off)
                self._emulated(off + R.EXP_DEVCTL, 2, write=0xFFFF, emulate=False)
                self._emulated(off + R.EXP_DEVSTA, 2, emulate=False, w1c=R.EXP_DEVSTA_CED | R.EXP_DEVSTA_NFED
                               | R.EXP_DEVSTA_FED | R.EXP_DEVSTA_URD)
                if exp.has_link(size):
                    self._emulated(off + R.EXP_LNKCTL, 2, write=0x0FFB, emulate=False)
                    self._emulated(off + R.EXP_LNKSTA, 2, w1c=R.EXP_LNKSTA_LBMS | R.EXP_LNKSTA_LABS, emulate=False)
                if exp.has_slot(size):
                    self._emulated(off + R.EXP_SLTCTL, 2, write=0x1FFF, emulate=False)
                    self._emulated(off + R.EXP_SLTSTA, 2, w1c=0x011F, emulate=False)
                if exp.has_root(size):
                    self._emulated(off + R.EXP_RTCTL, 2, write=0x001F, emulate=False)
                    self._emulated(off + R.EXP_RTSTA, 4, w1c=0x00010000, emulate=False)
                if exp.has_v2(size):
                    self._emulated(off + R.EXP_DEVCTL2, 2, write=0xFFFF, emulate=False)
                    self._emulated(off + R.EXP_LNKCTL2, 2, write=0xFFFF, emulate=False)
        elif cap_id == R.EXT_CAP_ID_ERR:
            self._emulated(off + R.ERR_UNCOR_STATUS, 4, w1c=0xFFFFFFFF, emulate=False)
            self._emulated(off + R.ERR_UNCOR_MASK, 8, write=(1 << 64) - 1, emulate=False)     # mask + severity
            self._emulated(off + R.ERR_COR_STATUS, 4, w1c=0xFFFFFFFF, emulate=False)
            self._emulated(off + R.ERR_COR_MASK, 4, write=0xFFFFFFFF, emulate=False)
            self._emulated(off + R.ERR_CAP, 4, write=R.ERR_CAP_ECRC_GENE | R.ERR_CAP_ECRC_CHKE, emulate=False)
            if size > R.ERR_ROOT_ERR_SRC:
                self._emulated(off + R.ERR_ROOT_COMMAND, 4, write=0x7, emulate=False)
                self._emulated(off + R.ERR_ROOT_STATUS, 4, w1c=0x7F, emulate=False)
        elif cap_id == R.EXT_CAP_ID_ACS:
            # only the controls the device says it implements (ACS Capability bits 6:0)
            self._emulated(off + R.ACS_CTRL, 2, write=self.peek(off + R.ACS_CAP, 2) & 0x7F, emulate=False)
        elif cap_id == R.EXT_CAP_ID_ATS:
            self._emulated(off + R.ATS_CTRL, 2, write=R.ATS_CTRL_ENABLE | R.ATS_CTRL_STU_MASK, emulate=False)

    # ------------------------------------------------------------------ access
    def _check(self, offset: int, size: int) -> None:
        if size not in (1, 2, 4):
            raise RegionAccessError(f"{self.source}: config access of {size} bytes at {offset:#05x}: "
                                    f"only 1, 2 or 4")
        if offset < 0 or offset + size > self.size:
            raise RegionAccessError(f"{self.source}: config access of {size} bytes at {offset:#05x} is outside "
                                    f"the {self.size}-byte config space")
        if offset % size:
            raise RegionAccessError(f"{self.source}: config access of {size} bytes at {offset:#05x} is not "
                                    f"naturally aligned")

    def _mask(self, mask: bytearray, offset: int, size: int) -> int:
        return int.from_bytes(mask[offset:offset + size], "little")

    def read(self, offset: int, size: int) -> int:
        """What the guest reads: emulated bits from the virtual copy, the rest from the device."""
        self._check(offset, size)
        emu = self._mask(self.emulated_mask, offset, size)
        value = self._mask(self._virt, offset, size) & emu
        full = (1 << (8 * size)) - 1
        if emu != full:
            value |= self.backing.passthrough_read(offset, size) & ~emu & full
        return value

    def write(self, offset: int, size: int, value: int) -> None:
        """A guest write: apply write/W1C masks to emulated bits, forward passed-through bits, notify watchers."""
        self._check(offset, size)
        full = (1 << (8 * size)) - 1
        if value < 0 or value > full:
            raise RegionAccessError(f"{self.source}: value {value:#x} does not fit a {size}-byte write at "
                                    f"{offset:#05x}")
        emu = self._mask(self.emulated_mask, offset, size)
        wm = self._mask(self.write_mask, offset, size)
        w1c = self._mask(self.w1c_mask, offset, size)
        if emu:
            old = self._mask(self._virt, offset, size)
            new = (old & ~(wm & emu)) | (value & wm & emu)
            new &= ~(value & w1c & emu)
            self._virt[offset:offset + size] = (new & full).to_bytes(size, "little")
        pt = ~emu & full
        if pt:
            forward = (wm | w1c) & pt
            keep = full & ~forward
            phys = value & forward
            if keep:
                # bits the guest may not change (and emulated bits sharing the access) keep the device's value
                phys |= self.backing.passthrough_read(offset, size) & keep
            self.backing.passthrough_write(offset, size, phys)
        for w_off, w_len, fn in list(self._watchers):
            if offset < w_off + w_len and w_off < offset + size:
                fn(offset, size, value)

    def guest_bytes(self) -> bytes:
        """The whole space as the guest reads it (dword reads), e.g. for ``ConfigSpace(v.guest_bytes())``."""
        return b"".join(self.read(o, 4).to_bytes(4, "little") for o in range(0, self.size, 4))

    def watch(self, offset: int, length: int, callback: Watcher) -> None:
        """Call ``callback(offset, size, value)`` after every guest write overlapping [offset, offset+length).

        The passthrough model uses this to follow Command (memory/IO enable),
        BAR moves, MSI/MSI-X enables and PM state changes.
        """
        self._watchers.append((offset, length, callback))

    def set_masks(self, offset: int, size: int, *, write: int | None = None, w1c: int | None = None,
                  emulated: int | None = None) -> None:
        """Set the masks of ``size`` bytes at ``offset`` (each an integer of that many bytes, little endian)."""
        if offset < 0 or offset + size > self.size or size <= 0:
            raise ConfigSpaceError(f"mask range of {size} bytes is outside the {self.size}-byte space", offset,
                                   self.source)
        if emulated is not None and self.backing is None and emulated != (1 << (8 * size)) - 1:
            raise ConfigSpaceError("bits can only be passed through with a backing", offset, self.source)
        for mask, val in ((self.write_mask, write), (self.w1c_mask, w1c), (self.emulated_mask, emulated)):
            if val is not None:
                self._set(mask, offset, size, val)

    def peek(self, offset: int, size: int) -> int:
        """The virtual copy's value (emulated bits), ignoring masks: for the device model, not the guest."""
        if offset < 0 or offset + size > self.size:
            raise ConfigSpaceError(f"{size}-byte peek is outside the {self.size}-byte space", offset, self.source)
        return self._mask(self._virt, offset, size)

    def poke(self, offset: int, size: int, value: int) -> None:
        """Set the virtual copy directly, ignoring masks: how the device model changes read-only bits
        (Status.Interrupt, PME status, link status ...).  No watcher is called."""
        if offset < 0 or offset + size > self.size:
            raise ConfigSpaceError(f"{size}-byte poke is outside the {self.size}-byte space", offset, self.source)
        self._set(self._virt, offset, size, value)

    # ------------------------------------------------------------------ BARs
    @property
    def rom_offset(self) -> int:
        return R.ROM_ADDRESS if self.header_type == R.HEADER_TYPE_NORMAL else R.ROM_ADDRESS1

    def bar_address(self, index: int) -> int:
        """The address the guest programmed into BAR ``index`` (flag bits masked off)."""
        s = self.bars.get(index)
        if s is None:
            raise ConfigSpaceError(f"BAR{index} is not implemented", R.BASE_ADDRESS_0 + 4 * index, self.source)
        off = R.BASE_ADDRESS_0 + 4 * index
        return self.peek(off, s.kind.width) & s.kind.address_mask

    @property
    def rom_address(self) -> int:
        return self.peek(self.rom_offset, 4) & R.ROM_ADDRESS_MASK

    @property
    def rom_enabled(self) -> bool:
        return bool(self.peek(self.rom_offset, 4) & R.ROM_ADDRESS_ENABLE)

    # ------------------------------------------------------------- capabilities
    def capabilities(self) -> list[tuple[int, int]]:
        """The guest-visible standard list: [(offset, id), ...] in list order."""
        return [(off, cid) for off, cid, _ in walk_capabilities(self._virt, self.source)]

    def extended_capabilities(self) -> list[tuple[int, int, int]]:
        """The guest-visible extended list: [(offset, id, version), ...] (a null head has ID 0)."""
        return [(off, cid, ver) for off, cid, ver, _ in walk_extended_capabilities(self._virt, self.source)]

    def find_capability(self, cap_id: int, *, extended: bool = False) -> int | None:
        """Offset of the first visible capability with ``cap_id``, or None."""
        if extended:
            return next((o for o, c, _v in self.extended_capabilities() if c == cap_id and c != 0), None)
        return next((o for o, c in self.capabilities() if c == cap_id), None)

    def hidden_capabilities(self) -> list[tuple[int, int, bool]]:
        """[(offset, id, extended), ...] of hidden capabilities."""
        return sorted((r.offset, r.cap_id, r.extended) for r in self._caps.values() if r.hidden)

    def reserve(self, offset: int, length: int) -> None:
        """Keep [offset, offset+length) out of capability placement (device registers outside any capability)."""
        if offset < R.STD_HEADER_SIZEOF or offset + length > self.size or length <= 0:
            raise ConfigSpaceError(f"reserved range of {length} bytes is outside the capability area", offset,
                                   self.source)
        self._reserved.append((offset, length))

    def _used(self, lo: int, hi: int) -> list[tuple[int, int]]:
        spans = [(r.offset, r.size) for r in self._caps.values()] + self._reserved
        return sorted((o, s) for o, s in spans if o < hi and lo < o + s)

    def add_capability(self, cap_id: int, size: int, offset: int | None = None, *, data: bytes | None = None,
                       extended: bool = False, version: int = 1, write_mask: bytes | None = None,
                       w1c_mask: bytes | None = None) -> int:
        """Add an emulated capability and link it at the tail of its list; returns its offset.

        ``data`` is the capability's content (``size`` bytes, header
        included; its ID/next bytes or extended header are overwritten).
        ``write_mask``/``w1c_mask`` (``size`` bytes each) default to the
        spec's for known IDs (PM, MSI, MSI-X, PCIe, AER, ACS, ATS) and to
        read-only otherwise.  Placement is first fit, dword aligned, unless
        ``offset`` is given.  An extended list must start at 0x100: when that
        is taken (by a hidden capability) the new one goes elsewhere behind a
        null header at 0x100.
        """
        lo, hi, hdr = ((R.EXT_CAP_START, self.size, 4) if extended else (R.STD_HEADER_SIZEOF, R.CFG_SPACE_SIZE, 2))
        what = "extended capability" if extended else "capability"
        if extended and self.size < R.CFG_SPACE_EXP_SIZE:
            raise ConfigSpaceError("no extended config space (256-byte device)", None, self.source)
        if not 0 < cap_id <= (0xFFFF if extended else 0xFF):
            raise ConfigSpaceError(f"{what} ID {cap_id:#x} out of range", None, self.source)
        if size < hdr or size > hi - lo:
            raise ConfigSpaceError(f"{what} size {size} must be in [{hdr}, {hi - lo}]", None, self.source)
        if data is not None and len(data) != size:
            raise ConfigSpaceError(f"{what} data is {len(data)} bytes, size says {size}", None, self.source)
        for name, m in (("write_mask", write_mask), ("w1c_mask", w1c_mask)):
            if m is not None and len(m) != size:
                raise ConfigSpaceError(f"{name} is {len(m)} bytes, size says {size}", None, self.source)
        body = bytearray(data if data is not None else bytes(size))
        if extended:
            body[0:4] = R.ext_cap_header(cap_id, version, 0).to_bytes(4, "little")
        else:
            body[0], body[1] = cap_id, 0
        need = self._known_size(cap_id, bytes(body), extended)
        if need is not None and need > size:
            raise ConfigSpaceError(f"{what} {cap_id:#x} needs {need} bytes for its registers, size says {size}",
                                   offset, self.source)
        ext_empty = extended and not self.extended_capabilities()
        if ext_empty:
            clash = self._used(R.EXT_CAP_START, R.EXT_CAP_START + 4)
            if clash and not all(self._caps.get(o) is not None and self._caps[o].hidden for o, _s in clash):
                raise ConfigSpaceError("0x100, where the extended list starts, is reserved", R.EXT_CAP_START,
                                       self.source)
        if offset is None:
            offset = next((o for o in range(lo, hi - size + 1, 4) if not self._used(o, o + size)), None)
            if offset is None:
                raise ConfigSpaceError(f"no free dword-aligned {size}-byte range for {what} {cap_id:#x}",
                                       None, self.source)
        else:
            if offset % 4 or offset < lo or offset + size > hi:
                raise ConfigSpaceError(f"{what} of {size} bytes cannot go at {offset:#05x}: must be dword aligned "
                                       f"in [{lo:#05x}, {hi:#05x})", offset, self.source)
            clash = self._used(offset, offset + size)
            if clash:
                raise ConfigSpaceError(f"{what} of {size} bytes at {offset:#05x} overlaps the capability or "
                                       f"reserved range at {clash[0][0]:#05x}", offset, self.source)
        if ext_empty and offset != R.EXT_CAP_START:
            self._set_null_head(offset)
        self._emulated(offset, size, value=int.from_bytes(body, "little"), write=0, w1c=0)
        self._caps[offset] = _CapRecord(cap_id, offset, size, extended, version if extended else 0)
        if write_mask is None and w1c_mask is None:
            self._default_cap_masks(cap_id, offset, size, extended=extended)
        else:
            if write_mask is not None:
                self.write_mask[offset:offset + size] = write_mask
            if w1c_mask is not None:
                self.w1c_mask[offset:offset + size] = w1c_mask
        if not ext_empty:   # a new extended list is already linked: it is the head or the null head's next
            self._link_tail(offset, extended)
        img = bytearray(self._reset_image)
        img[offset:offset + size] = body
        self._reset_image = bytes(img)
        return offset

    def _known_size(self, cap_id: int, body: bytes, extended: bool) -> int | None:
        """Bytes the registers of an added MSI, MSI-X or PM capability need (its typed view's size)."""
        if extended or cap_id not in (R.CAP_ID_MSI, R.CAP_ID_MSIX, R.CAP_ID_PM):
            return None
        return VIEWS[cap_id](body).size

    def _set_null_head(self, nxt: int) -> None:
        """Put a null extended header (ID 0) at 0x100 pointing to ``nxt``, recorded unless a hidden
        capability already reserves those bytes."""
        self._emulated(R.EXT_CAP_START, 4, value=R.ext_cap_header(0, 0, nxt))
        if not self._used(R.EXT_CAP_START, R.EXT_CAP_START + 4):
            self._caps[R.EXT_CAP_START] = _CapRecord(0, R.EXT_CAP_START, 4, True)

    def _link_tail(self, offset: int, extended: bool) -> None:
        if extended:
            tail = walk_extended_capabilities(self._virt, self.source)[-1][0]
            hdr = int.from_bytes(self._virt[tail:tail + 4], "little")
            self._set(self._virt, tail, 4, (hdr & 0x000FFFFF) | (offset << 20))
            return
        entries = walk_capabilities(self._virt, self.source)
        if entries:
            self._virt[entries[-1][0] + R.CAP_LIST_NEXT] = offset
        else:
            self._virt[R.CAPABILITY_LIST] = offset
            self._virt[R.STATUS] |= R.STATUS_CAP_LIST

    def _unlink(self, offset: int, extended: bool) -> _CapRecord:
        """Take the capability at ``offset`` out of its list and blank its bytes; returns its record."""
        rec = self._caps.get(offset)
        what = "extended capability" if extended else "capability"
        if extended:
            entries = [(o, n) for o, _c, _v, n in walk_extended_capabilities(self._virt, self.source)]
        else:
            entries = [(o, n) for o, _c, n in walk_capabilities(self._virt, self.source)]
        pos = next((i for i, (o, _n) in enumerate(entries) if o == offset), None)
        if rec is None or rec.hidden or pos is None or rec.extended != extended or rec.cap_id == 0:
            raise ConfigSpaceError(f"no visible {what} at {offset:#05x} in the list", offset, self.source)
        nxt = entries[pos][1]
        self._emulated(offset, rec.size, value=0, write=0, w1c=0)
        if extended:
            if pos == 0:
                # 0x100 cannot move: leave a null header there that still points at the rest (as QEMU does)
                del self._caps[offset]
                if nxt:
                    self._set_null_head(nxt)
                self._caps.setdefault(offset, rec)
            else:
                prev = entries[pos - 1][0]
                hdr = int.from_bytes(self._virt[prev:prev + 4], "little")
                self._set(self._virt, prev, 4, (hdr & 0x000FFFFF) | (nxt << 20))
            self._collapse_null_head()
        else:
            if pos == 0:
                self._virt[R.CAPABILITY_LIST] = nxt
                if nxt == 0:
                    self._virt[R.STATUS] &= ~R.STATUS_CAP_LIST & 0xFF
            else:
                self._virt[entries[pos - 1][0] + R.CAP_LIST_NEXT] = nxt
        return rec

    def _collapse_null_head(self) -> None:
        """A null header at 0x100 that points nowhere is an empty list: 0."""
        hdr = int.from_bytes(self._virt[R.EXT_CAP_START:R.EXT_CAP_START + 4], "little")
        if R.ext_cap_id(hdr) == 0 and R.ext_cap_next(hdr) == 0:   # (a null header with next 0 is just 0)
            self._set(self._virt, R.EXT_CAP_START, 4, 0)
            null = self._caps.get(R.EXT_CAP_START)
            if null is not None and null.cap_id == 0:
                del self._caps[R.EXT_CAP_START]

    def delete_capability(self, offset: int, *, extended: bool | None = None) -> None:
        """Unlink the capability at ``offset``, zero it and free its bytes for reuse."""
        ext = offset >= R.EXT_CAP_START if extended is None else extended
        rec = self._unlink(offset, ext)
        if self._caps.get(offset) is rec:
            del self._caps[offset]

    def hide_capability(self, offset: int, *, extended: bool | None = None) -> None:
        """Unlink the capability at ``offset`` from the guest's view; its bytes read 0 but stay reserved.

        Use this for capabilities the device has but the guest must not see
        (their registers stay where they are on the device).
        """
        ext = offset >= R.EXT_CAP_START if extended is None else extended
        rec = self._unlink(offset, ext)
        rec.hidden = True
        self._caps[offset] = rec

    def restrict_capabilities(self, keep: Iterable[int] = (), keep_extended: Iterable[int] = ()) -> None:
        """Hide every visible capability whose ID is not in ``keep`` (standard) / ``keep_extended``."""
        keep, keep_ext = set(keep), set(keep_extended)
        for off, cid in self.capabilities():
            if cid not in keep:
                self.hide_capability(off, extended=False)
        for off, cid, _v in self.extended_capabilities():
            if cid != 0 and cid not in keep_ext:
                self.hide_capability(off, extended=True)

    # ------------------------------------------------------------------ reset
    def reset(self) -> None:
        """Return every emulated writable or W1C bit to its value at construction (or when its
        capability was added): Command 0, BARs and ROM at their initial addresses, MSI/MSI-X off...
        A command with side effects: watchers are not called, the device is not touched."""
        for i in range(self.size):
            m = self.emulated_mask[i] & (self.write_mask[i] | self.w1c_mask[i])
            if m:
                self._virt[i] = (self._virt[i] & ~m & 0xFF) | (self._reset_image[i] & m)

    # ------------------------------------------------------------------ state
    def _layout(self) -> dict:
        return {
            "size": self.size,
            "capabilities": [list(x) for x in self.capabilities()],
            "extended_capabilities": [list(x) for x in self.extended_capabilities()],
            "hidden": [list(x) for x in self.hidden_capabilities()],
            "bars": [[s.index, s.kind, s.size, s.prefetchable] for s in sorted(self.bars.values(),
                                                                                key=lambda s: s.index)],
            "rom_size": self.rom_size,
        }

    def get_state(self) -> dict:
        """The virtual copy and the layout it belongs to, as a versioned JSON-ready dict."""
        st = {"format": STATE_FORMAT, "version": STATE_VERSION}
        st.update(self._layout())
        st["config"] = bytes(self._virt).hex()
        return st

    def set_state(self, state: Mapping) -> None:
        """Load what :meth:`get_state` returned; refuses state of another version or device layout."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise StateMismatchError(f"{self.source}: not a virtual config space state (format "
                                     f"{state.get('format') if isinstance(state, Mapping) else type(state).__name__!r})")
        if state.get("version") != STATE_VERSION:
            raise StateMismatchError(f"{self.source}: state version {state.get('version')!r} is not the "
                                     f"supported {STATE_VERSION}")
        mine = self._layout()
        for key, value in mine.items():
            theirs = state.get(key)
            if theirs != value:
                raise StateMismatchError(f"{self.source}: state was saved from a device with {key} {theirs!r}, "
                                         f"this one has {value!r}")
        try:
            config = bytes.fromhex(state["config"])
        except (KeyError, TypeError, ValueError) as e:
            raise StateMismatchError(f"{self.source}: state has no valid 'config' hex string ({e})") from None
        if len(config) != self.size:
            raise StateMismatchError(f"{self.source}: state config is {len(config)} bytes, this space {self.size}")
        # the capability lists inside the bytes must be what the layout said
        try:
            caps = [[o, c] for o, c, _n in walk_capabilities(config, "saved state")]
            ext = [[o, c, v] for o, c, v, _n in walk_extended_capabilities(config, "saved state")]
        except ConfigSpaceError as e:
            raise StateMismatchError(f"{self.source}: saved config bytes are corrupt: {e}") from None
        if caps != mine["capabilities"] or ext != mine["extended_capabilities"]:
            raise StateMismatchError(f"{self.source}: saved config bytes hold capability lists {caps} {ext}, "
                                     f"not the layout's {mine['capabilities']} {mine['extended_capabilities']}")
        self._virt[:] = config

