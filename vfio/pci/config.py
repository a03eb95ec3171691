"""Decoding of PCI configuration space: header, BARs, ROM and capability lists.

Every PCI function has a configuration space: 256 bytes for conventional PCI,
4096 for PCI Express (and PCI-X 2.0).  The first 64 bytes are a standard
header whose layout depends on the header type (0: endpoint, 1: PCI-to-PCI
bridge, 2: CardBus bridge).  Optional features are described by
*capabilities*, kept in two singly linked lists:

* the standard list, in bytes 0x40..0xff: the head pointer is the byte at 0x34
  (0x14 for CardBus) and is only valid when ``Status.CapList`` is set; each
  entry starts with an 8-bit ID and an 8-bit next pointer; 0 ends the list;
* the extended list, in bytes 0x100..0xfff: it always starts at 0x100; each
  entry starts with a 32-bit header holding a 16-bit ID, a 4-bit version and a
  12-bit next offset; 0 ends the list.

:class:`ConfigSpace` decodes a snapshot of those bytes.  It keeps the raw
bytes (``.raw``, and ``raw`` on every capability) and adds named accessors;
IDs it does not know stay visible as numbers (``name`` is ``None``).  The PM,
MSI, MSI-X and PCI Express capabilities come as :class:`PmCapability`,
:class:`MsiCapability`, :class:`MsixCapability`, :class:`PcieCapability`: the
typed views of :mod:`vfio.pci.caps` over their bytes, so their registers are
real properties (``cs.msix.table_bir``); other capabilities' decoded fields are
in ``fields`` (also readable as attributes).  Both list
walks are bounded, detect loops, and reject pointers into the header, into the
other list's area, past the data, or not dword aligned, and capabilities that
overlap or run off the end of their space, with a :class:`ConfigSpaceError`
naming the offset.  (The PCI spec tells software to mask bits 1:0 of a
standard pointer; no real device we have seen sets them, so a set bit is
treated as corruption, typically a bad read, rather than silently masked.)

How much data is needed
-----------------------
``ConfigSpace(data)`` takes 256 or 4096 bytes, the sizes the kernel exposes in
``/sys/bus/pci/devices/*/config`` to root and through the VFIO config region.
A non-root read of that sysfs file returns only the 64-byte header; such data
is accepted with ``allow_short=True``: the header, BARs and ROM decode, and
any access past the end (a capability walk, for instance) raises a
:class:`ConfigSpaceError` that names the length.  With 256 bytes the extended
list is empty (there is nothing to read).  The extended list is walked, as
``lspci`` does, only when the function has a PCI Express capability or a PCI-X
capability of a 266/533 MHz device; a conventional device's 0x100.. bytes are
not a list.

Decoding is lazy: constructing a ConfigSpace never fails on a corrupt list;
``capabilities`` / ``extended_capabilities`` (and what depends on them) raise
when accessed.  ``to_dict(strict=False)`` reports such an error in the output
instead, for tools that show whatever decodes.

Example::

    from vfio.host.sysfs import Host
    nvme = Host().find("1b36:0010")[0]     # QEMU's NVMe controller, by vendor:device
    cs = ConfigSpace(open(f"/sys/bus/pci/devices/{nvme.bdf}/config", "rb").read())
    cs.vendor_id, cs.device_id          # 0x1b36, 0x0010
    cs.msix.table_bir, cs.msix.table_size
    [c.name for c in cs.capabilities]   # ['MSI-X', 'PCI Express', 'Power Management']
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import Enum
from functools import cached_property
from typing import Any, Callable, Iterable, Mapping

from ..errors import Error, InvalidValue
from . import regs as R
from .caps import CapView, MsiCap, MsixCap, PcieCap, PmCap, field as _field
from .regs import BarKind

__all__ = [
    "ConfigSpaceError", "ConfigSpaceTruncated", "Bar", "BarOrigin", "KernelResource", "parse_resources", "Rom", "BridgeWindows",
    "Capability", "ExtCapability", "ConfigSpace",
    "walk_capabilities", "walk_extended_capabilities", "capability_size", "extended_capability_size",
    "bar_size_from_mask", "bar_write_mask", "rom_write_mask", "lspci_dump", "BarKind",
    "MsiCapability", "MsixCapability", "PcieCapability", "PmCapability",
]


class ConfigSpaceError(Error, ValueError):
    """Malformed or corrupt configuration space.

    ``offset`` is the config-space offset at fault (the pointer or register
    that is wrong), or ``None`` when the fault is not at one place (a wrong
    length).  ``source`` names the data (a file, a BDF) when the caller gave
    one.
    """

    def __init__(self, message: str, offset: int | None = None, source: str | None = None):
        where = f" at offset {offset:#05x}" if offset is not None else ""
        prefix = f"{source}: " if source else ""
        super().__init__(f"{prefix}config space{where}: {message}")
        self.offset = offset
        self.source = source


# ---------------------------------------------------------------------------
# little-endian accessors that say what was out of range
# ---------------------------------------------------------------------------
class ConfigSpaceTruncated(ConfigSpaceError):
    """A read past the end of the data: the bytes are missing (a truncated file or
    read), or a capability runs off the end of config space.  ``entries`` holds
    what a list walk found before it stopped, ``pointer`` the register (in the
    data) that points past its end."""
    entries: tuple | list = ()
    pointer: int | None = None


def _rd(data, offset: int, size: int, source: str | None = None) -> int:
    if offset < 0:
        raise ConfigSpaceError(f"{size}-byte read at a negative offset", offset, source)
    if offset + size > len(data):
        raise ConfigSpaceTruncated(f"{size}-byte read past the end of the {len(data)} bytes available"
                               + (" (a non-root sysfs read returns only the 64-byte header)"
                                  if len(data) == R.STD_HEADER_SIZEOF else ""), offset, source)
    return int.from_bytes(data[offset:offset + size], "little")


# ---------------------------------------------------------------------------
# list walks (shared with vfio.pci.vconfig, which keeps its lists in a bytearray)
# ---------------------------------------------------------------------------
#: At most this many standard capabilities fit (dword aligned in 0x40..0xff).
MAX_STD_CAPS = (R.CFG_SPACE_SIZE - R.STD_HEADER_SIZEOF) // 4
#: At most this many extended capabilities fit (dword aligned in 0x100..0xfff).
MAX_EXT_CAPS = (R.CFG_SPACE_EXP_SIZE - R.CFG_SPACE_SIZE) // 4


def _cap_pointer_register(data) -> int:
    htype = data[R.HEADER_TYPE] & R.HEADER_TYPE_MASK
    return R.CB_CAPABILITY_LIST if htype == R.HEADER_TYPE_CARDBUS else R.CAPABILITY_LIST


def walk_capabilities(data, source: str | None = None) -> list[tuple[int, int, int]]:
    """Walk the standard capability list of ``data`` (a bytes-like config space).

    Returns ``[(offset, cap_id, next), ...]`` in list order; ``[]`` when
    ``Status.CapList`` is clear.  Raises :class:`ConfigSpaceError` on a pointer
    into the header (< 0x40), a pointer not dword aligned, a pointer past the
    data, or a loop.
    """
    if _rd(data, R.STATUS, 2, source) & R.STATUS_CAP_LIST == 0:
        return []
    where = _cap_pointer_register(data)
    ptr = _rd(data, where, 1, source)
    seen: dict[int, int] = {}
    out: list[tuple[int, int, int]] = []
    try:
        _walk_std(data, source, where, ptr, seen, out)
    except ConfigSpaceTruncated as e:
        e.entries = out
        raise
    return out


def _walk_std(data, source, where, ptr, seen, out) -> None:
    while ptr:
        if ptr < R.STD_HEADER_SIZEOF:
            raise ConfigSpaceError(f"capability pointer {ptr:#04x} points into the standard header", where, source)
        if ptr & 3:
            raise ConfigSpaceError(f"capability pointer {ptr:#04x} is not dword aligned", where, source)
        if ptr in seen:
            raise ConfigSpaceError(f"capability list loops: pointer {ptr:#04x} leads back to the capability "
                                   f"already visited as entry {seen[ptr]}", where, source)
        if len(out) >= MAX_STD_CAPS:  # cannot happen without a loop; the bound is the guarantee
            raise ConfigSpaceError(f"capability list longer than {MAX_STD_CAPS} entries", where, source)
        try:
            cap_id = _rd(data, ptr, 1, source)
            nxt = _rd(data, ptr + R.CAP_LIST_NEXT, 1, source)
        except ConfigSpaceTruncated as e:
            e.pointer = where           # the register that points past the end of the data
            raise
        seen[ptr] = len(out)
        out.append((ptr, cap_id, nxt))
        where, ptr = ptr + R.CAP_LIST_NEXT, nxt


def walk_extended_capabilities(data, source: str | None = None) -> list[tuple[int, int, int, int]]:
    """Walk the extended capability list of ``data``.

    Returns ``[(offset, cap_id, version, next), ...]``; ``[]`` when ``data``
    has no bytes past 0x100 or the header at 0x100 is 0 or all ones (no
    list, or a function that does not decode extended config space).  An ID 0
    entry with a non-zero header (what QEMU leaves at 0x100 when it hides the
    first capability) is returned as is.  Raises :class:`ConfigSpaceError` on
    a next pointer below 0x100, a pointer to a zero or all-ones header, or a
    loop.  Does not check whether the function has a PCIe capability: that is
    :class:`ConfigSpace`'s business.  Data that ends inside the list (a
    truncated file) raises :class:`ConfigSpaceTruncated` carrying the entries
    found up to there.
    """
    if len(data) <= R.CFG_SPACE_SIZE:
        return []
    out: list[tuple[int, int, int, int]] = []
    try:
        _walk_ext(data, source, out)
    except ConfigSpaceTruncated as e:
        e.entries = out
        raise
    return out


def _walk_ext(data, source, out) -> None:
    off = R.EXT_CAP_START
    try:
        header = _rd(data, off, 4, source)
    except ConfigSpaceTruncated as e:
        e.pointer = off                 # the list's fixed start
        raise
    if header in (0, 0xFFFFFFFF):
        return
    seen: dict[int, int] = {}
    where = None  # offset of the header that pointed here
    while True:
        if off in seen:
            raise ConfigSpaceError(f"extended capability list loops: next pointer {off:#05x} leads back to "
                                   f"entry {seen[off]}", where, source)
        if len(out) >= MAX_EXT_CAPS:
            raise ConfigSpaceError(f"extended capability list longer than {MAX_EXT_CAPS} entries", where, source)
        try:
            header = _rd(data, off, 4, source)
        except ConfigSpaceTruncated as e:
            e.pointer = where if where is not None else off
            raise
        if where is not None and header in (0, 0xFFFFFFFF):
            raise ConfigSpaceError(f"extended capability next pointer {off:#05x} leads to an empty header "
                                   f"({header:#010x})", where, source)
        nxt = R.ext_cap_next(header)
        seen[off] = len(out)
        out.append((off, R.ext_cap_id(header), R.ext_cap_ver(header), nxt))
        if nxt == 0:
            return
        if nxt < R.EXT_CAP_START:
            raise ConfigSpaceError(f"extended capability next pointer {nxt:#05x} points into the standard "
                                   f"config space (below 0x100)", off, source)
        where, off = off, nxt


# ---------------------------------------------------------------------------
# BARs
# ---------------------------------------------------------------------------
class BarOrigin(str, Enum):
    """Where a BAR's type and address come from (``Bar.origin``)."""
    REGISTER = "register"       # the BAR register itself (config bytes alone, or the kernel agrees)
    KERNEL = "kernel"           # sysfs ``resource``: the register reads 0 (lspci's ``[virtual]``)
    SRIOV = "sr-iov"            # a VF: the kernel's address, from the PF's SR-IOV capability VF BAR
    ENHANCED = "enhanced"       # an Enhanced Allocation entry (lspci's ``[enhanced]``)


@dataclass(frozen=True)
class KernelResource:
    """One line of sysfs ``resource``: the kernel's view of a BAR, the ROM or a window.

    ``line`` is the line number (0-5 BARs, 6 ROM, 7-12 VF BARs of an SR-IOV
    PF); ``flags`` the kernel's IORESOURCE_* bits (``vfio.pci.regs``).  The
    kernel prints ``0 0 0`` for a resource it does not have.
    """
    line: int
    start: int
    end: int
    flags: int

    @property
    def present(self) -> bool:
        return bool(self.flags & R.IORESOURCE_TYPE_BITS) or bool(self.start or self.end)

    @property
    def size(self) -> int:
        """Bytes covered (the kernel's resource_size(); 1 for a single I/O port), 0 when absent."""
        if not self.present or self.end < self.start or (self.end == self.start == 0):
            return 0
        return self.end - self.start + 1

    @property
    def is_io(self) -> bool:
        return bool(self.flags & R.IORESOURCE_IO)

    @property
    def is_mem(self) -> bool:
        return bool(self.flags & R.IORESOURCE_MEM)

    @property
    def kind(self) -> BarKind | None:
        """:class:`BarKind` (IO, MEM32, MEM64), or None when the kernel gives no type."""
        if self.is_io:
            return BarKind.IO
        if self.is_mem:
            return BarKind.MEM64 if self.flags & R.IORESOURCE_MEM_64 else BarKind.MEM32
        return None

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & R.IORESOURCE_PREFETCH)

    @property
    def fixed(self) -> bool:
        return bool(self.flags & R.IORESOURCE_PCI_FIXED)

    @property
    def enhanced(self) -> bool:
        return bool(self.flags & R.IORESOURCE_PCI_EA_BEI)

    @property
    def unset(self) -> bool:
        return bool(self.flags & R.IORESOURCE_UNSET)


def parse_resources(text: str, source: str) -> list[KernelResource]:
    """The lines of a sysfs ``resource`` file as :class:`KernelResource`, in order
    (line 0-5 the BARs, 6 the ROM, 7-12 an SR-IOV PF's VF BARs, then bridge
    windows).  Each line is ``start end flags`` in hex, as the kernel's
    resource_show() prints it.  Raises :class:`~vfio.errors.InvalidValue` naming
    ``source`` and the line number when a line is not."""
    out = []
    for n, line in enumerate(text.splitlines()):
        f = line.split()
        try:
            if len(f) != 3:
                raise ValueError
            start, end, flags = (int(x, 16) for x in f)
        except ValueError:
            raise InvalidValue(f"{source}: line {n + 1} is not 'start end flags' in hex: {line.strip()!r}") from None
        out.append(KernelResource(n, start, end, flags))
    return out


@dataclass(frozen=True)
class Bar:
    """One Base Address Register (a 64-bit BAR is one Bar covering two slots).

    ``kind`` is a :class:`BarKind` (``'io'``, ``'mem32'`` or ``'mem64'``; the obsolete
    "below 1 MiB" memory type decodes as ``'mem32'``; ``raw`` keeps its bits).  ``raw`` is
    the register value (both dwords for ``'mem64'``), ``address`` the decoded
    base with the flag bits masked off.  ``size`` is ``None`` unless sizing
    data was given to :class:`ConfigSpace` (config bytes alone do not say).

    Given the kernel's resources, type and address are the kernel's (as lspci
    shows them), and ``origin`` says where they come from: ``virtual`` is True
    when the register reads 0 but the kernel has the resource (an SR-IOV VF,
    whose BARs the PF's SR-IOV capability defines; a legacy-mode IDE
    controller's fixed ports, ``fixed``).  ``disabled`` is lspci's
    ``[disabled]``: a BAR of the register whose decoding the Command register
    switches off.
    """
    index: int
    offset: int
    kind: BarKind
    prefetchable: bool
    address: int
    raw: int
    size: int | None = None
    origin: BarOrigin = BarOrigin.REGISTER
    virtual: bool = False
    fixed: bool = False
    disabled: bool = False

    @property
    def is_io(self) -> bool:
        return self.kind is BarKind.IO

    @property
    def is_64bit(self) -> bool:
        return self.kind is BarKind.MEM64

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["kind"] = self.kind.value
        d["origin"] = self.origin.value
        return d


def _bar_kind(kind) -> BarKind:
    try:
        return BarKind(kind)
    except ValueError:
        raise InvalidValue(f"BAR kind {kind!r} is not one of 'io', 'mem32', 'mem64'") from None


def bar_size_from_mask(mask: int, kind: BarKind | str) -> int:
    """Size of a BAR from the value read back after writing all ones to it
    (the inverse of :func:`bar_write_mask`).

    ``mask`` is the read-back value (both dwords, upper in bits 63:32, for a
    64-bit BAR); 0 (an unimplemented BAR) gives 0.  Raises
    :class:`~vfio.errors.InvalidValue` for an unknown ``kind``.
    """
    bits = mask & _bar_kind(kind).address_mask
    # As the kernel's pci_size(): the lowest writable address bit is the size.
    # (Devices may hardwire high bits to 0, e.g. 16-bit I/O decoders, so ~mask+1 is wrong.)
    return bits & -bits


def bar_write_mask(kind: BarKind | str, size: int) -> int:
    """The writable bits of a BAR of ``kind`` and ``size`` bytes: its address bits at and above
    the size (both dwords for a 64-bit BAR), so that writing all ones reads back the size mask
    :func:`bar_size_from_mask` decodes.  ``size`` 0 (unimplemented) gives 0.  Raises
    :class:`~vfio.errors.InvalidValue` for an unknown ``kind`` or a size that is not a power of two."""
    k = _bar_kind(kind)
    if size < 0 or size & (size - 1):
        raise InvalidValue(f"{k} BAR size {size:#x} is not a power of two")
    return ~(size - 1) & k.address_mask if size else 0


def rom_write_mask(size: int) -> int:
    """The writable bits of an expansion ROM BAR of ``size`` bytes: address bits at and above
    the size, and the enable bit; 0 for no ROM.  Raises :class:`~vfio.errors.InvalidValue`
    for a size that is not a power of two of at least 2 KiB (the register's address field)."""
    if not size:
        return 0
    if size & (size - 1) or not R.ROM_ADDRESS_MASK & -R.ROM_ADDRESS_MASK <= size <= 1 << 31:
        raise InvalidValue(f"ROM size {size:#x} is not a power of two in [0x800, 0x80000000]")
    return (~(size - 1) & R.ROM_ADDRESS_MASK) | R.ROM_ADDRESS_ENABLE


@dataclass(frozen=True)
class Rom:
    """The expansion ROM BAR (0x30, or 0x38 on a bridge).

    ``address`` is the kernel's when its resource was given (``virtual`` when
    the register's address bits read 0 but the kernel has one), else the
    register's; ``enabled`` is the register's enable bit.
    """
    offset: int
    address: int
    enabled: bool
    raw: int
    size: int | None = None
    virtual: bool = False

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class BridgeWindows:
    """Type 1 header: bus numbers and the windows forwarded downstream.

    A window whose base is above its limit is closed (``*_enabled`` False).
    ``io_32bit`` / ``prefetch_64bit`` say whether the upper halves are implemented.
    """
    primary_bus: int
    secondary_bus: int
    subordinate_bus: int
    secondary_latency_timer: int
    io_base: int
    io_limit: int
    io_32bit: bool
    memory_base: int
    memory_limit: int
    prefetch_base: int
    prefetch_limit: int
    prefetch_64bit: bool
    secondary_status: int
    bridge_control: int

    @property
    def io_enabled(self) -> bool:
        return self.io_base <= self.io_limit

    @property
    def memory_enabled(self) -> bool:
        return self.memory_base <= self.memory_limit

    @property
    def prefetch_enabled(self) -> bool:
        return self.prefetch_base <= self.prefetch_limit

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.update(io_enabled=self.io_enabled, memory_enabled=self.memory_enabled,
                 prefetch_enabled=self.prefetch_enabled)
        return d


# ---------------------------------------------------------------------------
# capabilities
# ---------------------------------------------------------------------------
class _FieldAccess:
    """Decoded fields readable as attributes: ``cap.cap_length`` is ``cap.fields['cap_length']``.

    The capabilities with a typed view (MSI, MSI-X, PCI Express, PM: the
    :class:`MsiCapability` ... subclasses, :mod:`vfio.pci.caps`) have their
    registers as real properties; this lookup is what is left for the fields of
    the other decoded capabilities.
    """

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name == "fields":  # keep copy/pickle from recursing
            raise AttributeError(name)
        try:
            return self.fields[name]
        except KeyError:
            raise AttributeError(f"{type(self).__name__} {self.label} has no field {name!r}") from None


def _fields_json(fields: dict) -> dict:
    def conv(v):
        if isinstance(v, (bytes, bytearray)):
            return v.hex()
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        return v
    return {k: conv(v) for k, v in fields.items()}


@dataclass(frozen=True)
class Capability(_FieldAccess):
    """One entry of the standard capability list.

    ``raw`` is the capability's bytes: its known size for decoded IDs, else up
    to the next capability in address order (or 0x100).  ``fields`` holds the
    decoded registers (also readable as attributes); unknown IDs have
    ``name`` None and no fields.
    """
    id: int
    offset: int
    next: int
    name: str | None
    raw: bytes
    fields: dict = field(default_factory=dict)
    truncated: str | None = None      # why the body could not be decoded (the data ends inside it)

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"capability {self.id:#04x}"

    def to_dict(self) -> dict:
        d = {"id": self.id, "offset": self.offset, "next": self.next, "name": self.name,
             "raw": self.raw.hex(), "fields": _fields_json(self.fields)}
        if self.truncated:
            d["truncated"] = self.truncated
        return d

    @property
    def base(self) -> int:
        """Where a typed view's registers start in ``raw`` (the capability's first byte)."""
        return 0

    def _read(self, rel: int, size: int) -> int:
        """A register of ``raw``; a read past its end (a truncated capability) raises
        :class:`ConfigSpaceTruncated` naming the config-space offset."""
        if rel + size > len(self.raw):
            raise ConfigSpaceTruncated(f"{self.label}: its {size}-byte register lies past the {len(self.raw)} "
                                       f"bytes read", self.offset + rel)
        return int.from_bytes(self.raw[rel:rel + size], "little")


class PmCapability(Capability, PmCap):
    """The Power Management capability: :class:`vfio.pci.caps.PmCap` over ``raw``."""


class MsiCapability(Capability, MsiCap):
    """The MSI capability: :class:`vfio.pci.caps.MsiCap` over ``raw``."""


class MsixCapability(Capability, MsixCap):
    """The MSI-X capability: :class:`vfio.pci.caps.MsixCap` over ``raw``."""


class PcieCapability(Capability, PcieCap):
    """The PCI Express capability: :class:`vfio.pci.caps.PcieCap` over ``raw``."""


#: Capability class by standard capability ID (the typed ones; others are plain Capability).
_TYPED_CAPS: dict[int, type[Capability]] = {
    R.CAP_ID_PM: PmCapability, R.CAP_ID_MSI: MsiCapability, R.CAP_ID_MSIX: MsixCapability,
    R.CAP_ID_EXP: PcieCapability,
}


@dataclass(frozen=True)
class ExtCapability(_FieldAccess):
    """One entry of the extended capability list (see :class:`Capability`)."""
    id: int
    version: int
    offset: int
    next: int
    name: str | None
    raw: bytes
    fields: dict = field(default_factory=dict)
    truncated: str | None = None      # see Capability.truncated

    @property
    def label(self) -> str:
        return self.name if self.name is not None else f"extended capability {self.id:#06x}"

    def to_dict(self) -> dict:
        d = {"id": self.id, "version": self.version, "offset": self.offset, "next": self.next,
             "name": self.name, "raw": self.raw.hex(), "fields": _fields_json(self.fields)}
        if self.truncated:
            d["truncated"] = self.truncated
        return d


class _Ctx:
    """What a capability decoder may need beyond its own bytes."""

    def __init__(self, data, source, header_type, vendor_id, pcie_type):
        self.data = data
        self.source = source
        self.header_type = header_type
        self.vendor_id = vendor_id
        self.pcie_type = pcie_type

    def read(self, off, size):
        """A register for a typed view (:mod:`vfio.pci.caps`), bounds-checked like u8/u16/u32."""
        return _rd(self.data, off, size, self.source)

    def u8(self, off):
        return _rd(self.data, off, 1, self.source)

    def u16(self, off):
        return _rd(self.data, off, 2, self.source)

    def u32(self, off):
        return _rd(self.data, off, 4, self.source)


def _bit(v: int, mask: int) -> bool:
    return bool(v & mask)


# Each decoder returns (size_in_bytes, fields).  Size is what the capability
# occupies; it is used for ``raw`` and for the overlap / end-of-space checks.

def _view_decoder(view: type[CapView]) -> Callable[[_Ctx, int], tuple[int, dict]]:
    """A decoder that is the typed view's own size and fields (PM, MSI, MSI-X)."""
    def dec(c: _Ctx, o: int):
        v = view(c.read, o)
        return v.size, v.decoded()
    dec.__name__ = f"_dec_{view.__name__}"
    return dec


def _dec_exp(c: _Ctx, o: int):
    v = PcieCap(c.read, o)
    size = v.size
    devcap, devctl, devsta = v.devcap, v.devctl, v.devsta
    f: dict[str, Any] = {
        "flags": v.flags, "version": v.version, "port_type": v.port_type, "port_type_name": v.port_type_name,
        "slot_implemented": v.slot_implemented, "interrupt_message_number": v.interrupt_message_number,
        "devcap": devcap,
        "max_payload_supported": R.EXP_PAYLOAD_BYTES[devcap & R.EXP_DEVCAP_PAYLOAD],
        "phantom_functions": _field(devcap, R.EXP_DEVCAP_PHANTOM),
        "extended_tag_supported": _bit(devcap, R.EXP_DEVCAP_EXT_TAG),
        "l0s_acceptable_latency": _field(devcap, R.EXP_DEVCAP_L0S),
        "l1_acceptable_latency": _field(devcap, R.EXP_DEVCAP_L1),
        "role_based_error_reporting": _bit(devcap, R.EXP_DEVCAP_RBER),
        "flr_capable": _bit(devcap, R.EXP_DEVCAP_FLR),
        "devctl": devctl,
        "correctable_error_reporting": _bit(devctl, R.EXP_DEVCTL_CERE),
        "non_fatal_error_reporting": _bit(devctl, R.EXP_DEVCTL_NFERE),
        "fatal_error_reporting": _bit(devctl, R.EXP_DEVCTL_FERE),
        "unsupported_request_reporting": _bit(devctl, R.EXP_DEVCTL_URRE),
        "relaxed_ordering": _bit(devctl, R.EXP_DEVCTL_RELAX_EN),
        "max_payload": R.EXP_PAYLOAD_BYTES[_field(devctl, R.EXP_DEVCTL_PAYLOAD)],
        "extended_tag": _bit(devctl, R.EXP_DEVCTL_EXT_TAG),
        "phantom_functions_enable": _bit(devctl, R.EXP_DEVCTL_PHANTOM),
        "aux_power_pm": _bit(devctl, R.EXP_DEVCTL_AUX_PME),
        "no_snoop": _bit(devctl, R.EXP_DEVCTL_NOSNOOP_EN),
        "max_read_request": R.EXP_PAYLOAD_BYTES[_field(devctl, R.EXP_DEVCTL_READRQ)],
        "bcr_flr": _bit(devctl, R.EXP_DEVCTL_BCR_FLR),
        "devsta": devsta,
        "correctable_error_detected": _bit(devsta, R.EXP_DEVSTA_CED),
        "non_fatal_error_detected": _bit(devsta, R.EXP_DEVSTA_NFED),
        "fatal_error_detected": _bit(devsta, R.EXP_DEVSTA_FED),
        "unsupported_request_detected": _bit(devsta, R.EXP_DEVSTA_URD),
        "transactions_pending": _bit(devsta, R.EXP_DEVSTA_TRPND),
    }
    if v.has_link():
        lnkcap, lnkctl, lnksta = v.lnkcap, v.lnkctl, v.lnksta
        f.update({
            "lnkcap": lnkcap,
            "port_number": _field(lnkcap, R.EXP_LNKCAP_PN),
            "max_link_speed": lnkcap & R.EXP_LNKCAP_SLS,
            "max_link_speed_name": R.EXP_LINK_SPEEDS.get(lnkcap & R.EXP_LNKCAP_SLS),
            "max_link_width": _field(lnkcap, R.EXP_LNKCAP_MLW),
            "aspm_support": _field(lnkcap, R.EXP_LNKCAP_ASPMS),
            "dll_link_active_reporting": _bit(lnkcap, R.EXP_LNKCAP_DLLLARC),
            "link_bandwidth_notification": _bit(lnkcap, R.EXP_LNKCAP_LBNC),
            "lnkctl": lnkctl,
            "aspm_control": lnkctl & R.EXP_LNKCTL_ASPMC,
            "link_disable": _bit(lnkctl, R.EXP_LNKCTL_LD),
            "common_clock": _bit(lnkctl, R.EXP_LNKCTL_CCC),
            "lnksta": lnksta,
            "current_link_speed": lnksta & R.EXP_LNKSTA_CLS,
            "current_link_speed_name": R.EXP_LINK_SPEEDS.get(lnksta & R.EXP_LNKSTA_CLS),
            "negotiated_link_width": _field(lnksta, R.EXP_LNKSTA_NLW),
            "link_training": _bit(lnksta, R.EXP_LNKSTA_LT),
            "slot_clock": _bit(lnksta, R.EXP_LNKSTA_SLC),
            "dll_link_active": _bit(lnksta, R.EXP_LNKSTA_DLLLA),
        })
    if v.has_slot():
        sltcap, sltctl, sltsta = v.sltcap, v.sltctl, v.sltsta
        f.update({
            "sltcap": sltcap,
            "physical_slot_number": _field(sltcap, R.EXP_SLTCAP_PSN),
            "attention_button": _bit(sltcap, R.EXP_SLTCAP_ABP),
            "power_controller": _bit(sltcap, R.EXP_SLTCAP_PCP),
            "mrl_sensor": _bit(sltcap, R.EXP_SLTCAP_MRLSP),
            "attention_indicator": _bit(sltcap, R.EXP_SLTCAP_AIP),
            "power_indicator": _bit(sltcap, R.EXP_SLTCAP_PIP),
            "hot_plug_surprise": _bit(sltcap, R.EXP_SLTCAP_HPS),
            "hot_plug_capable": _bit(sltcap, R.EXP_SLTCAP_HPC),
            "slot_power_limit_value": _field(sltcap, R.EXP_SLTCAP_SPLV),
            "slot_power_limit_scale": _field(sltcap, R.EXP_SLTCAP_SPLS),
            "electromechanical_interlock": _bit(sltcap, R.EXP_SLTCAP_EIP),
            "no_command_completed": _bit(sltcap, R.EXP_SLTCAP_NCCS),
            "sltctl": sltctl,
            "sltsta": sltsta,
            "presence_detect": _bit(sltsta, R.EXP_SLTSTA_PDS),
        })
    if v.has_root():
        f.update({"rtctl": v.rtctl, "rtcap": v.rtcap, "rtsta": v.rtsta})
    if v.version >= 2:
        lnkcap2, lnkctl2 = v.lnkcap2, v.lnkctl2
        f.update({
            "devcap2": v.devcap2, "devctl2": v.devctl2, "devsta2": v.devsta2,
            "lnkcap2": lnkcap2, "supported_link_speeds_vector": _field(lnkcap2, R.EXP_LNKCAP2_SLS),
            "lnkctl2": lnkctl2, "target_link_speed": lnkctl2 & R.EXP_LNKCTL2_TLS,
            "lnksta2": v.lnksta2, "sltcap2": v.sltcap2, "sltctl2": v.sltctl2, "sltsta2": v.sltsta2,
        })
    return size, f


def _dec_vndr(c: _Ctx, o: int):
    length = c.u8(o + R.VNDR_LENGTH)
    if length < 3:
        raise ConfigSpaceError(f"vendor-specific capability length {length} is shorter than its own 3-byte header",
                               o + R.VNDR_LENGTH, c.source)
    f: dict[str, Any] = {"cap_length": length, "payload": bytes(c.data[o + 3:o + length])}
    # virtio 1.x (spec 4.1.4) describes its register blocks with vendor-specific capabilities.
    if c.vendor_id == R.VIRTIO_VENDOR_ID and length >= 16:
        cfg_type = c.u8(o + R.VIRTIO_PCI_CAP_CFG_TYPE)
        f.update({
            "virtio_cfg_type": cfg_type,
            "virtio_cfg_type_name": R.VIRTIO_CFG_TYPE_NAMES.get(cfg_type),
            "virtio_bar": c.u8(o + R.VIRTIO_PCI_CAP_BAR),
            "virtio_id": c.u8(o + R.VIRTIO_PCI_CAP_ID),
            "virtio_offset": c.u32(o + R.VIRTIO_PCI_CAP_OFFSET),
            "virtio_length": c.u32(o + R.VIRTIO_PCI_CAP_LENGTH),
        })
        if cfg_type == 2 and length >= 20:
            f["virtio_notify_off_multiplier"] = c.u32(o + R.VIRTIO_PCI_NOTIFY_OFF_MULTIPLIER)
    return length, f


def _dec_ssvid(c: _Ctx, o: int):
    return 8, {"subsystem_vendor_id": c.u16(o + R.SSVID_VENDOR_ID), "subsystem_id": c.u16(o + R.SSVID_DEVICE_ID)}


def _dec_slotid(c: _Ctx, o: int):
    esr = c.u8(o + R.SID_ESR)
    return 4, {"expansion_slots": esr & R.SID_ESR_NSLOTS, "first_in_chassis": _bit(esr, R.SID_ESR_FIC),
               "chassis_number": c.u8(o + R.SID_CHASSIS_NR)}


def _dec_shpc(c: _Ctx, o: int):
    return 8, {"dword_select": c.u8(o + 2), "dword_data": c.u32(o + 4)}


def _dec_sata(c: _Ctx, o: int):
    rev, bar = c.u8(o + R.SATA_REVISION), c.u32(o + R.SATA_BAR)
    barloc = bar & R.SATA_BARLOC_MASK
    return R.SATA_SIZEOF, {
        "revision_major": rev >> 4, "revision_minor": rev & 0xF,
        "bar_location": barloc,
        # BARLOC 4..9 select BAR0..5 (AHCI 1.3, 2.4.2); 0xf means the registers follow in config space.
        "bar_index": barloc - 4 if 4 <= barloc <= 9 else None,
        "bar_offset": ((bar & R.SATA_BAROFST_MASK) >> 4) * 4,
    }


def _dec_af(c: _Ctx, o: int):
    cap = c.u8(o + R.AF_CAP)
    return R.CAP_AF_SIZEOF, {"length": c.u8(o + R.AF_LENGTH), "tp_capable": _bit(cap, R.AF_CAP_TP),
                             "flr_capable": _bit(cap, R.AF_CAP_FLR), "control": c.u8(o + R.AF_CTRL),
                             "status": c.u8(o + R.AF_STATUS)}


def _dec_ea(c: _Ctx, o: int):
    num = c.u8(o + R.EA_NUM_ENT) & R.EA_NUM_ENT_MASK
    pos = o + (8 if c.header_type == R.HEADER_TYPE_BRIDGE else 4)
    entries = []
    for _ in range(num):  # bounded by the 6-bit count
        dw0 = c.u32(pos)
        n_dw = 1 + (dw0 & 7)  # Entry Size counts the dwords after the first
        entries.append({"offset": pos, "dw0": dw0, "bei": (dw0 >> 4) & 0xF, "primary_properties": (dw0 >> 8) & 0xFF,
                        "secondary_properties": (dw0 >> 16) & 0xFF, "writable": _bit(dw0, 1 << 30),
                        "enabled": _bit(dw0, 1 << 31),
                        "raw": bytes(c.data[pos:pos + 4 * n_dw])})
        pos += 4 * n_dw
    return pos - o, {"num_entries": num, "entries": entries}


def _dec_pcix(c: _Ctx, o: int):
    if c.header_type == R.HEADER_TYPE_BRIDGE:
        return 8, {"secondary_status": c.u16(o + 2), "bridge_status": c.u32(o + 4)}
    cmd, status = c.u16(o + 2), c.u32(o + 4)
    version = (cmd >> 12) & 3
    return (8 if version == 0 else 24), {"command": cmd, "status": status, "version": version,
                                         "capable_266mhz": _bit(status, 1 << 30),
                                         "capable_533mhz": _bit(status, 1 << 31)}


def _dec_vpd(c: _Ctx, o: int):
    addr = c.u16(o + R.VPD_ADDR)
    return R.CAP_VPD_SIZEOF, {"address": addr & ~R.VPD_ADDR_F, "flag": _bit(addr, R.VPD_ADDR_F),
                              "data": c.u32(o + R.VPD_DATA)}


_STD_DECODERS: dict[int, Callable[[_Ctx, int], tuple[int, dict]]] = {
    R.CAP_ID_PM: _view_decoder(PmCap), R.CAP_ID_MSI: _view_decoder(MsiCap), R.CAP_ID_MSIX: _view_decoder(MsixCap),
    R.CAP_ID_EXP: _dec_exp,
    R.CAP_ID_VNDR: _dec_vndr, R.CAP_ID_SSVID: _dec_ssvid, R.CAP_ID_SLOTID: _dec_slotid,
    R.CAP_ID_SHPC: _dec_shpc, R.CAP_ID_SATA: _dec_sata, R.CAP_ID_AF: _dec_af, R.CAP_ID_EA: _dec_ea,
    R.CAP_ID_PCIX: _dec_pcix, R.CAP_ID_VPD: _dec_vpd,
}


# ---- extended ------------------------------------------------------------------
def _dec_aer(c: _Ctx, o: int):
    cap = c.u32(o + R.ERR_CAP)
    f = {
        "uncorrectable_status": c.u32(o + R.ERR_UNCOR_STATUS),
        "uncorrectable_mask": c.u32(o + R.ERR_UNCOR_MASK),
        "uncorrectable_severity": c.u32(o + R.ERR_UNCOR_SEVER),
        "correctable_status": c.u32(o + R.ERR_COR_STATUS),
        "correctable_mask": c.u32(o + R.ERR_COR_MASK),
        "capabilities_control": cap,
        "first_error_pointer": cap & R.ERR_CAP_FEP_MASK,
        "ecrc_generation_capable": _bit(cap, R.ERR_CAP_ECRC_GENC),
        "ecrc_generation_enable": _bit(cap, R.ERR_CAP_ECRC_GENE),
        "ecrc_check_capable": _bit(cap, R.ERR_CAP_ECRC_CHKC),
        "ecrc_check_enable": _bit(cap, R.ERR_CAP_ECRC_CHKE),
        "header_log": [c.u32(o + R.ERR_HEADER_LOG + 4 * i) for i in range(4)],
    }
    size = R.ERR_MIN_SIZEOF
    if c.pcie_type in (R.EXP_TYPE_ROOT_PORT, R.EXP_TYPE_RC_EC):
        size = R.ERR_ROOT_ERR_SRC + 4
        f.update(root_command=c.u32(o + R.ERR_ROOT_COMMAND), root_status=c.u32(o + R.ERR_ROOT_STATUS),
                 error_source=c.u32(o + R.ERR_ROOT_ERR_SRC))
    return size, f


def _dec_dsn(c: _Ctx, o: int):
    serial = c.u32(o + R.DSN_LOW) | (c.u32(o + R.DSN_HIGH) << 32)
    return R.DSN_SIZEOF, {"serial": serial, "serial_str": "-".join(f"{b:02x}" for b in serial.to_bytes(8, "big"))}


def _dec_acs(c: _Ctx, o: int):
    cap, ctl = c.u16(o + R.ACS_CAP), c.u16(o + R.ACS_CTRL)
    names = (("source_validation", R.ACS_SV), ("translation_blocking", R.ACS_TB), ("p2p_request_redirect", R.ACS_RR),
             ("p2p_completion_redirect", R.ACS_CR), ("upstream_forwarding", R.ACS_UF),
             ("p2p_egress_control", R.ACS_EC), ("direct_translated_p2p", R.ACS_DT))
    egress_bits = (cap >> 8) or 256 if cap & R.ACS_EC else 0
    size = R.ACS_SIZEOF + ((egress_bits + 31) // 32) * 4
    f: dict[str, Any] = {"capability": cap, "control": ctl, "egress_vector_bits": egress_bits}
    for n, m in names:
        f[n] = _bit(cap, m)
        f[n + "_enable"] = _bit(ctl, m)
    return size, f


def _dec_ari(c: _Ctx, o: int):
    cap = c.u16(o + R.ARI_CAP)
    return R.ARI_SIZEOF, {"capability": cap, "mfvc": _bit(cap, R.ARI_CAP_MFVC), "acs": _bit(cap, R.ARI_CAP_ACS),
                          "next_function": cap >> 8, "control": c.u16(o + R.ARI_CTRL)}


def _dec_ats(c: _Ctx, o: int):
    cap, ctl = c.u16(o + R.ATS_CAP), c.u16(o + R.ATS_CTRL)
    return R.ATS_SIZEOF, {"capability": cap, "invalidate_queue_depth": cap & R.ATS_CAP_QDEP_MASK,
                          "page_aligned_request": _bit(cap, R.ATS_CAP_PAGE_ALIGNED), "control": ctl,
                          "enabled": _bit(ctl, R.ATS_CTRL_ENABLE),
                          "smallest_translation_unit": ctl & R.ATS_CTRL_STU_MASK}


def _dec_sriov(c: _Ctx, o: int):
    return R.SRIOV_SIZEOF, {
        "capabilities": c.u32(o + R.SRIOV_CAP), "control": c.u16(o + R.SRIOV_CTRL),
        "status": c.u16(o + R.SRIOV_STATUS), "initial_vfs": c.u16(o + R.SRIOV_INITIAL_VF),
        "total_vfs": c.u16(o + R.SRIOV_TOTAL_VF), "num_vfs": c.u16(o + R.SRIOV_NUM_VF),
        "function_dependency_link": c.u8(o + R.SRIOV_FUNC_LINK),
        "first_vf_offset": c.u16(o + R.SRIOV_VF_OFFSET), "vf_stride": c.u16(o + R.SRIOV_VF_STRIDE),
        "vf_device_id": c.u16(o + R.SRIOV_VF_DID), "supported_page_sizes": c.u32(o + R.SRIOV_SUP_PGSIZE),
        "system_page_size": c.u32(o + R.SRIOV_SYS_PGSIZE),
        "vf_bars": [c.u32(o + R.SRIOV_BAR + 4 * i) for i in range(6)],
        "vf_bar_regions": _vf_bar_regions([c.u32(o + R.SRIOV_BAR + 4 * i) for i in range(6)]),
    }


def _vf_bar_regions(regs: list[int]) -> list[dict]:
    """The SR-IOV capability's six VF BAR registers decoded like a type 0 header's BARs.

    Each VF's BAR n lies at the VF BAR n address + VF number x the per-VF size
    (the kernel's sysfs ``resource`` of the PF, lines 7-12, holds all VFs' span).
    Registers reading 0 are left out, as lspci does."""
    out, i = [], 0
    while i < len(regs):
        raw = regs[i]
        if raw & R.BASE_ADDRESS_SPACE_IO:          # not allowed for VFs, shown as it reads
            kind, addr = BarKind.IO, raw & R.BASE_ADDRESS_IO_MASK
        elif raw & R.BASE_ADDRESS_MEM_TYPE_MASK == R.BASE_ADDRESS_MEM_TYPE_64 and i + 1 < len(regs):
            raw |= regs[i + 1] << 32
            kind, addr = BarKind.MEM64, raw & R.BASE_ADDRESS_MEM64_MASK
        else:
            kind, addr = BarKind.MEM32, raw & R.BASE_ADDRESS_MEM_MASK
        if raw:
            pref = kind is not BarKind.IO and _bit(raw, R.BASE_ADDRESS_MEM_PREFETCH)
            out.append({"index": i, "kind": kind.value, "prefetchable": pref, "address": addr, "raw": raw})
        i += kind.slots
    return out


def _dec_ext_vndr(c: _Ctx, o: int):
    hdr = c.u32(o + R.VNDR_HEADER)
    length = hdr >> 20
    if length < 8:
        raise ConfigSpaceError(f"vendor-specific extended capability length {length} is shorter than its 8-byte "
                               f"header", o + R.VNDR_HEADER, c.source)
    return length, {"vsec_id": hdr & 0xFFFF, "vsec_rev": (hdr >> 16) & 0xF, "vsec_length": length,
                    "payload": bytes(c.data[o + 8:o + length])}


def _dec_dvsec(c: _Ctx, o: int):
    h1, h2 = c.u32(o + R.DVSEC_HEADER1), c.u16(o + R.DVSEC_HEADER2)
    length = h1 >> 20
    if length < 10:
        raise ConfigSpaceError(f"DVSEC length {length} is shorter than its 10-byte header", o + R.DVSEC_HEADER1,
                               c.source)
    return length, {"dvsec_vendor_id": h1 & 0xFFFF, "dvsec_rev": (h1 >> 16) & 0xF, "dvsec_length": length,
                    "dvsec_id": h2}


def _dec_ltr(c: _Ctx, o: int):
    return R.LTR_SIZEOF, {"max_snoop_latency": c.u16(o + R.LTR_MAX_SNOOP_LAT),
                          "max_no_snoop_latency": c.u16(o + R.LTR_MAX_NOSNOOP_LAT)}


def _dec_pasid(c: _Ctx, o: int):
    cap = c.u16(o + R.PASID_CAP)
    return R.PASID_SIZEOF, {"capability": cap, "max_pasid_width": (cap >> 8) & 0x1F, "control": c.u16(o + R.PASID_CTRL)}


def _dec_pri(c: _Ctx, o: int):
    return R.PRI_SIZEOF, {"control": c.u16(o + R.PRI_CTRL), "status": c.u16(o + R.PRI_STATUS),
                          "max_requests": c.u32(o + R.PRI_MAX_REQ), "allocated_requests": c.u32(o + R.PRI_ALLOC_REQ)}


_EXT_DECODERS: dict[int, Callable[[_Ctx, int], tuple[int, dict]]] = {
    R.EXT_CAP_ID_ERR: _dec_aer, R.EXT_CAP_ID_DSN: _dec_dsn, R.EXT_CAP_ID_ACS: _dec_acs, R.EXT_CAP_ID_ARI: _dec_ari,
    R.EXT_CAP_ID_ATS: _dec_ats, R.EXT_CAP_ID_SRIOV: _dec_sriov, R.EXT_CAP_ID_VNDR: _dec_ext_vndr,
    R.EXT_CAP_ID_DVSEC: _dec_dvsec, R.EXT_CAP_ID_LTR: _dec_ltr, R.EXT_CAP_ID_PASID: _dec_pasid,
    R.EXT_CAP_ID_PRI: _dec_pri,
}


def _decode_list(entries, decoders, ctx: _Ctx, start: int, end: int, what: str):
    """Decode each (offset, id) of a walked list; returns [(size, fields, raw, truncated)] in list order.

    The size of an ID without a decoder is a guess (up to the next capability in
    address order); decoded sizes are checked against the end of the space and
    against each other.  A capability whose registers lie past the end of the
    data (a truncated read, or a capability running off the end of config
    space) is returned with ``truncated`` saying so, at its own offset.
    """
    offsets = sorted(e[0] for e in entries)
    decoded = []
    known = []  # (offset, size) of decoded capabilities, for the overlap check
    n = len(ctx.data)
    for e in entries:
        off, cap_id = e[0], e[1]
        dec = decoders.get(cap_id)
        if dec is not None:
            try:
                size, fields = dec(ctx, off)
            except ConfigSpaceTruncated:
                decoded.append((n - off, {}, bytes(ctx.data[off:]), _cut_message(what, cap_id, off, n, end)))
                continue
            if off + size > n and off + size <= end:
                # decoded from what is there, but its tail is missing
                decoded.append((n - off, fields, bytes(ctx.data[off:]),
                                _cut_message(what, cap_id, off, n, end, size)))
                continue
            if off + size > end:
                raise ConfigSpaceError(f"{what} {cap_id:#04x} of {size} bytes runs past the end of its space "
                                       f"({end:#05x})", off, ctx.source)
            known.append((off, size, cap_id))
        else:
            later = [x for x in offsets if x > off]
            size, fields = (later[0] if later else min(end, len(ctx.data))) - off, {}
        decoded.append((size, fields, bytes(ctx.data[off:off + size]), None))
    known.sort()
    for (o1, s1, i1), (o2, _s2, i2) in zip(known, known[1:]):
        if o1 + s1 > o2:
            raise ConfigSpaceError(f"{what} {i1:#04x} ({s1} bytes) overlaps {what} {i2:#04x} at {o2:#05x}",
                                   o1, ctx.source)
    # every capability's own header must not sit inside a decoded one
    for off in offsets:
        for o1, s1, i1 in known:
            if o1 < off < o1 + s1:
                raise ConfigSpaceError(f"{what} at {off:#05x} lies inside {what} {i1:#04x} at {o1:#05x} "
                                       f"({s1} bytes)", off, ctx.source)
    return decoded


def _cut_message(what: str, cap_id: int, off: int, n: int, end: int, size: int | None = None) -> str:
    """Why the capability at ``off`` is truncated: where its bytes stop."""
    whose = f"{what} {cap_id:#04x} at {off:#05x}" + (f" ({size} bytes)" if size else "")
    if n >= end:
        return f"{whose} runs past the end of config space ({end:#05x})"
    return f"{whose} is cut short: the data ends at {n:#05x} (only {n} bytes were read)"


def capability_size(data, offset: int, header_type: int = R.HEADER_TYPE_NORMAL, vendor_id: int = 0) -> int | None:
    """Bytes the standard capability at ``offset`` occupies, or None for an ID without a decoder."""
    dec = _STD_DECODERS.get(data[offset])
    if dec is None:
        return None
    return dec(_Ctx(data, None, header_type, vendor_id, None), offset)[0]


def extended_capability_size(data, offset: int, pcie_type: int | None = None) -> int | None:
    """Bytes the extended capability at ``offset`` occupies, or None for an ID without a decoder."""
    dec = _EXT_DECODERS.get(R.ext_cap_id(int.from_bytes(data[offset:offset + 4], "little")))
    if dec is None:
        return None
    return dec(_Ctx(data, None, R.HEADER_TYPE_NORMAL, 0, pcie_type), offset)[0]


# ---------------------------------------------------------------------------
# the config space
# ---------------------------------------------------------------------------
class ConfigSpace:
    """A decoded snapshot of one function's configuration space.  See the module docstring.

    ``bar_sizes`` maps BAR index to size in bytes (from VFIO region info,
    or :func:`bar_size_from_mask`); ``rom_size`` likewise.  ``resources``
    is the kernel's view, the lines of sysfs ``resource``
    (:class:`KernelResource`, e.g. from :meth:`vfio.host.sysfs.Host.resources`):
    where given, a BAR's type, address and size are the kernel's, which is
    the only place they exist when the register reads 0 (SR-IOV VFs,
    legacy-mode IDE; see :class:`Bar`).  ``source`` names the data in error
    messages.

    With ``allow_short``, data of other lengths than 256/4096 is decoded as
    far as it goes: 64 bytes is a header-only read (:attr:`header_only`, what
    sysfs gives a non-root reader); any other length is :attr:`truncated` and
    what could not be decoded is listed by :attr:`incomplete` and marked on
    the capability it cuts (``Capability.truncated``).
    """

    def __init__(self, data: bytes | bytearray | memoryview, *, allow_short: bool = False,
                 bar_sizes: Mapping[int, int] | None = None, rom_size: int | None = None,
                 resources: "Iterable[KernelResource] | None" = None, source: str | None = None):
        data = bytes(data)
        n = len(data)
        if n > R.CFG_SPACE_EXP_SIZE:
            raise ConfigSpaceError(f"{n} bytes is more than the 4096 of PCI Express config space", None, source)
        if n not in (R.CFG_SPACE_SIZE, R.CFG_SPACE_EXP_SIZE):
            if not allow_short:
                raise ConfigSpaceError(f"{n} bytes: expected 256 (PCI) or 4096 (PCI Express); a non-root read of "
                                       f"sysfs 'config' gives 64 (pass allow_short=True for header-only "
                                       f"decoding)", None, source)
            if n < R.STD_HEADER_SIZEOF:
                raise ConfigSpaceError(f"{n} bytes is shorter than the 64-byte standard header", None, source)
        self.raw = data
        self.source = source
        self.bar_sizes = dict(bar_sizes or {})
        self.rom_size = rom_size
        self.resources: dict[int, KernelResource] = {r.line: r for r in (resources or ()) if r.present}
        self._cut: list[tuple[int | None, str]] = []   # filled by the list walks of truncated data

    @property
    def header_only(self) -> bool:
        """Only the 64-byte standard header: what sysfs ``config`` gives a reader without root."""
        return len(self.raw) == R.STD_HEADER_SIZEOF

    @property
    def truncated(self) -> bool:
        """The data stops short of the 256 or 4096 bytes a function has (a cut file or read)."""
        return len(self.raw) not in (R.STD_HEADER_SIZEOF, R.CFG_SPACE_SIZE, R.CFG_SPACE_EXP_SIZE)

    @property
    def incomplete(self) -> list[tuple[int | None, str]]:
        """(offset, why) for each part that could not be decoded because the data ends:
        the length itself, a list continuing past the end, each truncated capability.
        Empty for complete data and for a header-only read.  Decodes both lists."""
        caps = self.capabilities
        ext = self.extended_capabilities
        out: list[tuple[int | None, str]] = []
        n = len(self.raw)
        if self.truncated:
            full = R.CFG_SPACE_SIZE if n < R.CFG_SPACE_SIZE else R.CFG_SPACE_EXP_SIZE
            out.append((n, f"{n} bytes: config space is cut short (a function has {R.CFG_SPACE_SIZE} or "
                           f"{R.CFG_SPACE_EXP_SIZE}); bytes {n:#05x}..{full - 1:#05x} are missing"))
        out.extend(self._cut)
        out.extend((c.offset, c.truncated) for c in [*caps, *ext] if c.truncated)
        return out

    def _u8(self, off: int) -> int:
        return _rd(self.raw, off, 1, self.source)

    def _u16(self, off: int) -> int:
        return _rd(self.raw, off, 2, self.source)

    def _u32(self, off: int) -> int:
        return _rd(self.raw, off, 4, self.source)

    def __len__(self) -> int:
        return len(self.raw)

    def __repr__(self) -> str:
        return (f"<ConfigSpace {self.vendor_id:04x}:{self.device_id:04x} class {self.class_code:06x} "
                f"type {self.header_type} {len(self.raw)} bytes>")

    # ---- common header ---------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return self._u16(R.VENDOR_ID)

    @property
    def device_id(self) -> int:
        return self._u16(R.DEVICE_ID)

    @property
    def command(self) -> int:
        return self._u16(R.COMMAND)

    @property
    def status(self) -> int:
        return self._u16(R.STATUS)

    @property
    def revision(self) -> int:
        return self._u8(R.REVISION_ID)

    @property
    def class_code(self) -> int:
        """24 bits: base class << 16 | subclass << 8 | programming interface."""
        return self._u32(R.CLASS_REVISION) >> 8

    @property
    def base_class(self) -> int:
        return self._u8(R.CLASS_DEVICE + 1)

    @property
    def subclass(self) -> int:
        return self._u8(R.CLASS_DEVICE)

    @property
    def prog_if(self) -> int:
        return self._u8(R.CLASS_PROG)

    @property
    def cache_line_size(self) -> int:
        return self._u8(R.CACHE_LINE_SIZE)

    @property
    def latency_timer(self) -> int:
        return self._u8(R.LATENCY_TIMER)

    @property
    def header_type(self) -> int:
        """0 (endpoint), 1 (PCI bridge) or 2 (CardBus); the multifunction bit is :attr:`multifunction`."""
        return self._u8(R.HEADER_TYPE) & R.HEADER_TYPE_MASK

    @property
    def multifunction(self) -> bool:
        return bool(self._u8(R.HEADER_TYPE) & R.HEADER_TYPE_MFD)

    @property
    def bist(self) -> int:
        return self._u8(R.BIST)

    @property
    def interrupt_line(self) -> int:
        return self._u8(R.INTERRUPT_LINE)

    @property
    def interrupt_pin(self) -> int:
        """0 = none, 1..4 = INTA#..INTD#."""
        return self._u8(R.INTERRUPT_PIN)

    @property
    def capabilities_pointer(self) -> int:
        return self._u8(_cap_pointer_register(self.raw))

    @property
    def subsystem_vendor_id(self) -> int | None:
        """From the header (type 0, CardBus); bridges carry it in an SSVID capability, if at all."""
        ht = self.header_type
        if ht == R.HEADER_TYPE_NORMAL:
            return self._u16(R.SUBSYSTEM_VENDOR_ID)
        if ht == R.HEADER_TYPE_CARDBUS:
            return self._u16(0x40)
        cap = self.find(R.CAP_ID_SSVID)
        return cap.subsystem_vendor_id if cap else None

    @property
    def subsystem_id(self) -> int | None:
        ht = self.header_type
        if ht == R.HEADER_TYPE_NORMAL:
            return self._u16(R.SUBSYSTEM_ID)
        if ht == R.HEADER_TYPE_CARDBUS:
            return self._u16(0x42)
        cap = self.find(R.CAP_ID_SSVID)
        return cap.subsystem_id if cap else None

    def command_flags(self) -> dict[str, bool]:
        """The Command register as named bits."""
        c = self.command
        return {"io": _bit(c, R.COMMAND_IO), "memory": _bit(c, R.COMMAND_MEMORY), "bus_master": _bit(c, R.COMMAND_MASTER),
                "special_cycles": _bit(c, R.COMMAND_SPECIAL), "mwi": _bit(c, R.COMMAND_INVALIDATE),
                "vga_snoop": _bit(c, R.COMMAND_VGA_PALETTE), "parity": _bit(c, R.COMMAND_PARITY),
                "stepping": _bit(c, R.COMMAND_WAIT), "serr": _bit(c, R.COMMAND_SERR),
                "fast_back": _bit(c, R.COMMAND_FAST_BACK), "intx_disable": _bit(c, R.COMMAND_INTX_DISABLE)}

    def status_flags(self) -> dict[str, Any]:
        """The Status register as named bits (``devsel`` is the 2-bit timing code)."""
        s = self.status
        return {"interrupt": _bit(s, R.STATUS_INTERRUPT), "cap_list": _bit(s, R.STATUS_CAP_LIST),
                "66mhz": _bit(s, R.STATUS_66MHZ), "fast_back": _bit(s, R.STATUS_FAST_BACK),
                "master_data_parity_error": _bit(s, R.STATUS_PARITY), "devsel": _field(s, R.STATUS_DEVSEL_MASK),
                "signaled_target_abort": _bit(s, R.STATUS_SIG_TARGET_ABORT),
                "received_target_abort": _bit(s, R.STATUS_REC_TARGET_ABORT),
                "received_master_abort": _bit(s, R.STATUS_REC_MASTER_ABORT),
                "signaled_system_error": _bit(s, R.STATUS_SIG_SYSTEM_ERROR),
                "detected_parity_error": _bit(s, R.STATUS_DETECTED_PARITY)}

    # ---- BARs and ROM ------------------------------------------------------------
    @property
    def num_bar_slots(self) -> int:
        """BAR registers the header type has: 6 (type 0), 2 (type 1), 1 (CardBus socket base)."""
        return {R.HEADER_TYPE_NORMAL: 6, R.HEADER_TYPE_BRIDGE: 2, R.HEADER_TYPE_CARDBUS: 1}.get(self.header_type, 0)

    @property
    def is_virtual_function(self) -> bool:
        """An SR-IOV VF: its Vendor and Device ID registers read 0xffff (the IDs are the PF's
        SR-IOV capability's), and so do not say what it is; neither do its BAR registers (0)."""
        return self.vendor_id == 0xFFFF and self.device_id == 0xFFFF

    @cached_property
    def bars(self) -> list[Bar]:
        """Implemented BARs: those whose register is non-zero, whose size is known and non-zero,
        or which the kernel has (``resources``).

        (From config bytes alone an unimplemented BAR and an unassigned 32-bit
        memory BAR both read 0; give ``bar_sizes`` or ``resources`` to tell them apart.)
        """
        out: list[Bar] = []
        i, n = 0, self.num_bar_slots
        cmd = self.command
        while i < n:
            off = R.BASE_ADDRESS_0 + 4 * i
            raw = self._u32(off)
            kr = self.resources.get(R.RESOURCE_LINE_BARS + i)
            if kr is not None and kr.kind is not None:
                bar = self._kernel_bar(i, off, raw, kr, cmd)
                out.append(bar)
                i += bar.kind.slots
                continue
            size = self.bar_sizes.get(i)
            if raw & R.BASE_ADDRESS_SPACE_IO:
                bar = Bar(i, off, BarKind.IO, False, raw & R.BASE_ADDRESS_IO_MASK, raw, size,
                          disabled=not cmd & R.COMMAND_IO)
                i += 1
            else:
                mtype = raw & R.BASE_ADDRESS_MEM_TYPE_MASK
                pref = _bit(raw, R.BASE_ADDRESS_MEM_PREFETCH)
                dis = not cmd & R.COMMAND_MEMORY
                if mtype == R.BASE_ADDRESS_MEM_TYPE_64:
                    if i + 1 >= n:
                        raise ConfigSpaceError(f"BAR{i} is 64-bit but is the last BAR of a type "
                                               f"{self.header_type} header: no upper half", off, self.source)
                    raw64 = raw | (self._u32(off + 4) << 32)
                    bar = Bar(i, off, BarKind.MEM64, pref, raw64 & R.BASE_ADDRESS_MEM64_MASK, raw64, size, disabled=dis)
                    i += 2
                elif mtype in (R.BASE_ADDRESS_MEM_TYPE_32, R.BASE_ADDRESS_MEM_TYPE_1M):
                    bar = Bar(i, off, BarKind.MEM32, pref, raw & R.BASE_ADDRESS_MEM_MASK, raw, size, disabled=dis)
                    i += 1
                else:
                    raise ConfigSpaceError(f"BAR{i} has the reserved memory type 3 ({raw:#010x})", off, self.source)
            if bar.raw != 0 or (size or 0) > 0:
                if size is not None and size and (size & (size - 1)):
                    raise ConfigSpaceError(f"BAR{bar.index} size {size:#x} given is not a power of two", off,
                                           self.source)
                out.append(bar)
        return out

    def _kernel_bar(self, i: int, off: int, raw: int, kr: KernelResource, cmd: int) -> Bar:
        """BAR ``i`` as the kernel has it, its register ``raw`` kept.

        The register carries the BAR when its address bits are set; when they
        read 0 but the kernel has an address, the kernel's is the only one
        there is (lspci prints ``[virtual]``): a VF's (from its PF's SR-IOV
        capability), or a fixed legacy one.  As in lspci, a virtual BAR is
        never ``[disabled]``: the Command register does not govern it."""
        kind = kr.kind
        if kind is BarKind.MEM64:
            if i + 1 >= self.num_bar_slots:
                raise ConfigSpaceError(f"the kernel has BAR{i} as 64-bit but it is the last BAR of a type "
                                       f"{self.header_type} header", off, self.source)
            raw |= self._u32(off + 4) << 32
        hw = raw & (R.BASE_ADDRESS_IO_MASK if kind is BarKind.IO else R.BASE_ADDRESS_MEM64_MASK)
        if kr.enhanced:
            origin, virtual = BarOrigin.ENHANCED, False
        elif hw == 0 and kr.start != 0:
            origin = BarOrigin.SRIOV if self.is_virtual_function else BarOrigin.KERNEL
            virtual = True
        else:
            origin, virtual = BarOrigin.REGISTER, False
        decode = R.COMMAND_IO if kind is BarKind.IO else R.COMMAND_MEMORY
        return Bar(i, off, kind, kr.prefetchable, kr.start if kr.start else hw, raw,
                   kr.size or self.bar_sizes.get(i), origin, virtual, kr.fixed,
                   disabled=not virtual and not cmd & decode)

    def bar(self, index: int) -> Bar | None:
        """The BAR starting at slot ``index``, or None if not implemented (or the upper half of a 64-bit BAR)."""
        for b in self.bars:
            if b.index == index:
                return b
        return None

    @property
    def rom(self) -> Rom | None:
        """The expansion ROM BAR, or None when its register is 0 and no size is known (or CardBus)."""
        ht = self.header_type
        if ht == R.HEADER_TYPE_NORMAL:
            off = R.ROM_ADDRESS
        elif ht == R.HEADER_TYPE_BRIDGE:
            off = R.ROM_ADDRESS1
        else:
            return None
        raw = self._u32(off)
        kr = self.resources.get(R.RESOURCE_LINE_ROM)
        if kr is not None:
            hw = raw & R.ROM_ADDRESS_MASK
            return Rom(off, kr.start if kr.start else hw, _bit(raw, R.ROM_ADDRESS_ENABLE), raw,
                       kr.size or self.rom_size, virtual=hw == 0 and kr.start != 0)
        if raw == 0 and not self.rom_size:
            return None
        return Rom(off, raw & R.ROM_ADDRESS_MASK, _bit(raw, R.ROM_ADDRESS_ENABLE), raw, self.rom_size)

    @property
    def bridge(self) -> BridgeWindows | None:
        """Bus numbers and forwarding windows of a type 1 header; None for other header types."""
        if self.header_type != R.HEADER_TYPE_BRIDGE:
            return None
        io_b, io_l = self._u8(R.IO_BASE), self._u8(R.IO_LIMIT)
        io32 = (io_b & R.IO_RANGE_TYPE_MASK) == R.IO_RANGE_TYPE_32
        io_base = (io_b & 0xF0) << 8
        io_limit = ((io_l & 0xF0) << 8) | 0xFFF
        if io32:
            io_base |= self._u16(R.IO_BASE_UPPER16) << 16
            io_limit |= self._u16(R.IO_LIMIT_UPPER16) << 16
        mem_base = (self._u16(R.MEMORY_BASE) & 0xFFF0) << 16
        mem_limit = ((self._u16(R.MEMORY_LIMIT) & 0xFFF0) << 16) | 0xFFFFF
        p_b, p_l = self._u16(R.PREF_MEMORY_BASE), self._u16(R.PREF_MEMORY_LIMIT)
        p64 = (p_b & R.PREF_RANGE_TYPE_MASK) == R.PREF_RANGE_TYPE_64
        p_base = (p_b & 0xFFF0) << 16
        p_limit = ((p_l & 0xFFF0) << 16) | 0xFFFFF
        if p64:
            p_base |= self._u32(R.PREF_BASE_UPPER32) << 32
            p_limit |= self._u32(R.PREF_LIMIT_UPPER32) << 32
        return BridgeWindows(self._u8(R.PRIMARY_BUS), self._u8(R.SECONDARY_BUS), self._u8(R.SUBORDINATE_BUS),
                             self._u8(R.SEC_LATENCY_TIMER), io_base, io_limit, io32, mem_base, mem_limit,
                             p_base, p_limit, p64, self._u16(R.SEC_STATUS), self._u16(R.BRIDGE_CONTROL))

    # ---- capabilities ------------------------------------------------------------
    def _ctx(self, pcie_type=None) -> _Ctx:
        return _Ctx(self.raw, self.source, self.header_type, self.vendor_id, pcie_type)

    @cached_property
    def capabilities(self) -> list[Capability]:
        """The standard capability list, in list order."""
        if self.header_only:
            walk_capabilities(self.raw, self.source)    # raises, naming the length, if there is a list
            return []
        try:
            entries = walk_capabilities(self.raw, self.source)
        except ConfigSpaceTruncated as e:
            entries = e.entries
            self._cut.append((e.pointer, f"the capability list continues at {e.offset:#05x} (pointer at "
                                         f"{e.pointer:#05x}), past the end of the {len(self.raw)} bytes read"))
        decoded = _decode_list(entries, _STD_DECODERS, self._ctx(), R.STD_HEADER_SIZEOF, R.CFG_SPACE_SIZE,
                               "capability")
        return [_TYPED_CAPS.get(cid, Capability)(cid, off, nxt, R.CAP_NAMES.get(cid), raw, fields, cut)
                for (off, cid, nxt), (_size, fields, raw, cut) in zip(entries, decoded)]

    @property
    def has_extended_space(self) -> bool:
        """Whether bytes 0x100.. hold an extended capability list: a PCIe function, or PCI-X 266/533."""
        if len(self.raw) <= R.CFG_SPACE_SIZE:
            return False
        for cap in self.capabilities:
            if cap.id == R.CAP_ID_EXP:
                return True
            if cap.id == R.CAP_ID_PCIX and (cap.fields.get("capable_266mhz") or cap.fields.get("capable_533mhz")):
                return True
        return False

    @cached_property
    def extended_capabilities(self) -> list[ExtCapability]:
        """The extended capability list, in list order (empty without extended config space)."""
        if not self.has_extended_space:
            return []
        try:
            entries = walk_extended_capabilities(self.raw, self.source)
        except ConfigSpaceTruncated as e:
            entries = e.entries
            self._cut.append((e.pointer, f"the extended capability list continues at {e.offset:#05x}, past the "
                                         f"end of the {len(self.raw)} bytes read"))
        pcie = self.find(R.CAP_ID_EXP)
        ctx = self._ctx(pcie.port_type if pcie else None)
        decoded = _decode_list([(e[0], e[1]) for e in entries], _EXT_DECODERS, ctx, R.EXT_CAP_START,
                               R.CFG_SPACE_EXP_SIZE, "extended capability")
        out = []
        for (off, cid, ver, nxt), (_size, fields, raw, cut) in zip(entries, decoded):
            name = "Null" if cid == 0 else R.EXT_CAP_NAMES.get(cid)
            out.append(ExtCapability(cid, ver, off, nxt, name, raw, fields, cut))
        return out

    def find(self, cap_id: int) -> Capability | None:
        """The first standard capability with ``cap_id``, or None."""
        for c in self.capabilities:
            if c.id == cap_id:
                return c
        return None

    def find_all(self, cap_id: int) -> list[Capability]:
        """Every standard capability with ``cap_id`` (vendor-specific ones repeat)."""
        return [c for c in self.capabilities if c.id == cap_id]

    def find_ext(self, cap_id: int) -> ExtCapability | None:
        """The first extended capability with ``cap_id``, or None."""
        for c in self.extended_capabilities:
            if c.id == cap_id:
                return c
        return None

    @property
    def msi(self) -> Capability | None:
        """The MSI capability (fields: enabled, vectors_capable, vectors_enabled, is_64bit, per_vector_masking,
        address, data, mask_bits, pending_bits), or None."""
        return self.find(R.CAP_ID_MSI)

    @property
    def msix(self) -> Capability | None:
        """The MSI-X capability (fields: table_size, enabled, function_mask, table_bir, table_offset, pba_bir,
        pba_offset), or None."""
        return self.find(R.CAP_ID_MSIX)

    @property
    def pcie(self) -> Capability | None:
        """The PCI Express capability (fields: version, port_type, port_type_name, max_payload, link ...), or None."""
        return self.find(R.CAP_ID_EXP)

    @property
    def pm(self) -> Capability | None:
        """The Power Management capability (fields: version, power_state, pme_support ...), or None."""
        return self.find(R.CAP_ID_PM)

    @property
    def is_pcie(self) -> bool:
        return self.pcie is not None

    # ---- output ---------------------------------------------------------------------
    def to_dict(self, strict: bool = True) -> dict:
        """Everything decoded, as JSON-ready plain types (bytes as hex strings).

        With ``strict=False`` a corrupt capability list does not raise: the
        list is replaced by ``{"error": message, "offset": offset}`` so a tool
        can still show the rest.  For header-only data (``allow_short``)
        ``header_only`` is True and both lists are ``None`` (not read, as
        opposed to empty).  For truncated data ``truncated`` is True, the lists
        hold what the data holds (a cut capability carries ``truncated``: why),
        and ``incomplete`` lists ``{"offset", "message"}`` for each part that
        could not be decoded (empty when nothing is missing).
        """
        d: dict[str, Any] = {
            "length": len(self.raw),
            "vendor_id": self.vendor_id, "device_id": self.device_id,
            "command": self.command, "command_flags": self.command_flags(),
            "status": self.status, "status_flags": self.status_flags(),
            "revision": self.revision, "class_code": self.class_code,
            "cache_line_size": self.cache_line_size, "latency_timer": self.latency_timer,
            "header_type": self.header_type, "multifunction": self.multifunction, "bist": self.bist,
            "interrupt_line": self.interrupt_line, "interrupt_pin": self.interrupt_pin,
            "capabilities_pointer": self.capabilities_pointer,
        }

        def attempt(key, fn):
            if strict:
                d[key] = fn()
                return
            try:
                d[key] = fn()
            except ConfigSpaceError as e:
                d[key] = {"error": str(e), "offset": e.offset}

        short = self.header_only
        d["header_only"] = short
        d["truncated"] = self.truncated
        if short and self.header_type != R.HEADER_TYPE_NORMAL:
            d["subsystem_vendor_id"] = d["subsystem_id"] = None     # would need the SSVID capability
        else:
            attempt("subsystem_vendor_id", lambda: self.subsystem_vendor_id)
            attempt("subsystem_id", lambda: self.subsystem_id)
        attempt("bars", lambda: [b.to_dict() for b in self.bars])
        rom = self.rom
        d["rom"] = rom.to_dict() if rom else None
        br = self.bridge
        d["bridge"] = br.to_dict() if br else None
        if short:
            # a header-only read (non-root sysfs): the lists were not read, which is not corruption
            d["capabilities"] = d["extended_capabilities"] = None
        else:
            attempt("capabilities", lambda: [c.to_dict() for c in self.capabilities])
            if len(self.raw) < R.CFG_SPACE_SIZE:
                d["extended_capabilities"] = None     # cut before 0x100: not read
            else:
                attempt("extended_capabilities", lambda: [c.to_dict() for c in self.extended_capabilities])
        try:
            cut = [] if short else self.incomplete
        except ConfigSpaceError:       # a corrupt list, already reported in its place
            cut = [(len(self.raw), f"{len(self.raw)} bytes: config space is cut short")] if self.truncated else []
        d["incomplete"] = [{"offset": o, "message": m} for o, m in cut]
        d["raw"] = self.raw.hex()
        return d

    @classmethod
    def from_file(cls, path, **kw) -> "ConfigSpace":
        """Read a binary dump (a sysfs ``config`` file, a fixture)."""
        with open(path, "rb") as f:
            data = f.read()
        kw.setdefault("source", str(path))
        return cls(data, **kw)


def lspci_dump(data: bytes, bdf: str = "00:00.0") -> str:
    """``data`` in the text form ``lspci -xxxx`` prints and ``lspci -F FILE`` reads back.

    One header line starting with the BDF, then 16 bytes a line with a hex
    offset (3 digits past 256 bytes).
    """
    width = 3 if len(data) > R.CFG_SPACE_SIZE else 2
    lines = [f"{bdf} config space dump"]
    for i in range(0, len(data), 16):
        lines.append(f"{i:0{width}x}: " + " ".join(f"{b:02x}" for b in data[i:i + 16]))
    return "\n".join(lines) + "\n"

