"""Typed views of the PCI capabilities the toolkit reads and emulates: MSI, MSI-X, PCI Express, PM.

A capability is a block of registers at some offset of config space.  Which
registers it has, and where, often depends on its own bits: an MSI
capability's Message Data sits at +0x08 or +0x0c depending on whether it has a
64-bit address, its mask bits exist only when it is maskable; a PCI Express
capability of version 1 stops after the registers its port type has.  That
knowledge lives here, once, as small classes over *something that reads
registers* and a base offset:

* bytes (a config-space snapshot, or a capability's own ``raw`` bytes with
  base 0), or
* a callable ``read(offset, size) -> int`` (little-endian, 1/2/4 bytes): the
  decoder's bounds-checked reader, :meth:`vfio.pci.vconfig.VirtualConfigSpace.peek`,
  a device's config region.

Every property reads the register when asked (a view never caches), so a view
over a live virtual config space follows the guest's writes.  Offsets and
masks come from :mod:`vfio.pci.regs`; the decoder (:mod:`vfio.pci.config`),
the virtual config space (:mod:`vfio.pci.vconfig`) and the passthrough model
read capabilities through these views instead of re-decoding them.

``FIELDS`` of each view lists, in order, the decoded fields
:meth:`CapView.decoded` returns: what ``vfio-inspect --json`` prints for that
capability.
"""

from __future__ import annotations

from typing import Any, Callable, ClassVar, Generic, TypeVar, overload

from ..errors import InvalidValue
from . import regs as R

__all__ = ["CapView", "Flag", "MsiCap", "MsixCap", "PcieCap", "PmCap", "Reg", "VIEWS", "field"]

Reader = Callable[[int, int], int]


def field(v: int, mask: int) -> int:
    """The value of the bit field ``mask`` of register value ``v``, shifted down (FIELD_GET)."""
    return (v & mask) >> ((mask & -mask).bit_length() - 1)


def _buffer_reader(buf) -> Reader:
    def read(offset: int, size: int) -> int:
        if offset < 0 or offset + size > len(buf):
            raise InvalidValue(f"capability register of {size} bytes at {offset:#05x} is outside the "
                               f"{len(buf)} bytes given")
        return int.from_bytes(buf[offset:offset + size], "little")
    return read


T = TypeVar("T")


class Reg(Generic[T]):
    """A register of a capability view, or a bit field of one, read each time it is accessed.

    ``Reg(rel, size)`` is the register of ``size`` bytes at ``rel``; with ``mask`` the bits
    of ``mask`` (shifted down unless ``shift`` is False); ``kind`` makes the value (``bool``
    for a flag).  ``present``, the name of a view method taking no argument, says whether the
    capability has the register at all (an AttributeError when it does not).
    """

    def __init__(self, rel: int, size: int, mask: int | None = None, kind: Callable[[int], T] = int, *,
                 shift: bool = True, present: str | None = None):
        self.rel, self.size, self.mask, self.kind, self.shift, self.present = rel, size, mask, kind, shift, present
        self.name = f"register at +{rel:#x}"

    def __set_name__(self, owner, name: str) -> None:
        self.name = name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> "Reg[T]": ...

    @overload
    def __get__(self, obj: "CapView", owner: type | None = None) -> T: ...

    def __get__(self, obj, owner=None):
        if obj is None:
            return self
        if self.present is not None and not getattr(obj, self.present)():
            where = getattr(obj, "offset", obj.base)        # a decoded Capability's config-space offset
            raise AttributeError(f"{type(obj).__name__} at {where:#05x} has no {self.name} register")
        v = obj._reg(self.rel, self.size)
        if self.mask is not None:
            v = field(v, self.mask) if self.shift else v & self.mask
        return self.kind(v)


def Flag(rel: int, size: int, mask: int) -> Reg[bool]:      # noqa: N802 (reads like the Reg it makes)
    """A one-bit (or any-bit-set) field as a bool."""
    return Reg(rel, size, mask, bool)


class CapView:
    """The registers of one capability at ``base`` of ``source`` (bytes or a ``read(offset, size)``)."""

    cap_id: ClassVar[int]
    FIELDS: ClassVar[tuple[str, ...]] = ()

    def __init__(self, source, base: int = 0):
        self._read: Reader = source if callable(source) else _buffer_reader(source)
        self.base = base

    def _reg(self, rel: int, size: int) -> int:
        return self._read(self.base + rel, size)

    @property
    def size(self) -> int:
        """Bytes the capability occupies (header included)."""
        raise NotImplementedError

    def decoded(self) -> dict[str, Any]:
        """The decoded fields, ``FIELDS`` in order (the decoder's and the JSON's)."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base {self.base:#05x})"


class PmCap(CapView):
    """Power Management (PCI PM 1.2 chapter 3)."""
    cap_id = R.CAP_ID_PM
    FIELDS = ("pmc", "pmcsr", "version", "pme_clock", "dsi", "aux_current_ma", "d1_support", "d2_support",
              "pme_support", "power_state", "power_state_name", "no_soft_reset", "pme_enable", "data_select",
              "data_scale", "pme_status", "bridge_extensions", "data")
    #: Offset of PMCSR, the control/status register.
    ctrl_offset = R.PM_CTRL
    STATE_NAMES = ("D0", "D1", "D2", "D3hot")

    pmc = Reg(R.PM_PMC, 2)
    version = Reg(R.PM_PMC, 2, R.PM_CAP_VER_MASK)
    pme_clock = Flag(R.PM_PMC, 2, R.PM_CAP_PME_CLOCK)
    dsi = Flag(R.PM_PMC, 2, R.PM_CAP_DSI)
    d1_support = Flag(R.PM_PMC, 2, R.PM_CAP_D1)
    d2_support = Flag(R.PM_PMC, 2, R.PM_CAP_D2)
    pmcsr = Reg(R.PM_CTRL, 2)
    power_state = Reg(R.PM_CTRL, 2, R.PM_CTRL_STATE_MASK)
    no_soft_reset = Flag(R.PM_CTRL, 2, R.PM_CTRL_NO_SOFT_RESET)
    pme_enable = Flag(R.PM_CTRL, 2, R.PM_CTRL_PME_ENABLE)
    data_select = Reg(R.PM_CTRL, 2, R.PM_CTRL_DATA_SEL_MASK)
    data_scale = Reg(R.PM_CTRL, 2, R.PM_CTRL_DATA_SCALE_MASK)
    pme_status = Flag(R.PM_CTRL, 2, R.PM_CTRL_PME_STATUS)
    bridge_extensions = Reg(R.PM_PPB_EXTENSIONS, 1)
    data = Reg(R.PM_DATA_REGISTER, 1)

    @property
    def size(self) -> int:
        return R.PM_SIZEOF

    @property
    def aux_current_ma(self) -> int:
        return R.PM_AUX_CURRENT_MA[field(self.pmc, R.PM_CAP_AUX_POWER)]

    @property
    def pme_support(self) -> dict[str, bool]:
        pme = field(self.pmc, R.PM_CAP_PME_MASK)
        return {s: bool(pme & (1 << i)) for i, s in enumerate(("D0", "D1", "D2", "D3hot", "D3cold"))}

    @property
    def power_state_name(self) -> str:
        return self.STATE_NAMES[self.power_state]


class MsiCap(CapView):
    """MSI (PCI 3.0 6.8.1): the register layout follows the 64-bit and per-vector-masking bits."""
    cap_id = R.CAP_ID_MSI
    FIELDS = ("control", "enabled", "multiple_message_capable_code", "vectors_capable",
              "multiple_message_enable_code", "vectors_enabled", "is_64bit", "per_vector_masking", "address",
              "data", "mask_bits", "pending_bits")
    control_offset = R.MSI_FLAGS
    address_offset = R.MSI_ADDRESS_LO

    @staticmethod
    def size_for(control: int) -> int:
        """Bytes an MSI capability with Message Control ``control`` occupies (10, 14, 20 or 24)."""
        is64 = control & R.MSI_FLAGS_64BIT
        if control & R.MSI_FLAGS_MASKBIT:
            return (R.MSI_PENDING_64 if is64 else R.MSI_PENDING_32) + 4     # the last register: Pending Bits
        return (R.MSI_DATA_64 if is64 else R.MSI_DATA_32) + 2                # the last register: Message Data

    control = Reg(R.MSI_FLAGS, 2)
    enabled = Flag(R.MSI_FLAGS, 2, R.MSI_FLAGS_ENABLE)
    multiple_message_capable_code = Reg(R.MSI_FLAGS, 2, R.MSI_FLAGS_QMASK)
    multiple_message_enable_code = Reg(R.MSI_FLAGS, 2, R.MSI_FLAGS_QSIZE)
    is_64bit = Flag(R.MSI_FLAGS, 2, R.MSI_FLAGS_64BIT)
    #: Per-vector masking capable: the Mask and Pending registers exist.
    maskable = Flag(R.MSI_FLAGS, 2, R.MSI_FLAGS_MASKBIT)
    per_vector_masking = maskable

    @property
    def size(self) -> int:
        return self.size_for(self.control)

    @property
    def vectors_capable(self) -> int:
        return 1 << self.multiple_message_capable_code

    @property
    def vectors_enabled(self) -> int:
        """Vectors the Multiple Message Enable field grants (whether or not MSI is enabled)."""
        return 1 << self.multiple_message_enable_code

    @property
    def address_hi_offset(self) -> int | None:
        return R.MSI_ADDRESS_HI if self.is_64bit else None

    @property
    def data_offset(self) -> int:
        return R.MSI_DATA_64 if self.is_64bit else R.MSI_DATA_32

    @property
    def mask_offset(self) -> int | None:
        if not self.maskable:
            return None
        return R.MSI_MASK_64 if self.is_64bit else R.MSI_MASK_32

    @property
    def pending_offset(self) -> int | None:
        if not self.maskable:
            return None
        return R.MSI_PENDING_64 if self.is_64bit else R.MSI_PENDING_32

    @property
    def address(self) -> int:
        addr = self._reg(R.MSI_ADDRESS_LO, 4)
        if self.is_64bit:
            addr |= self._reg(R.MSI_ADDRESS_HI, 4) << 32
        return addr

    @property
    def data(self) -> int:
        return self._reg(self.data_offset, 2)

    @property
    def mask_bits(self) -> int | None:
        off = self.mask_offset
        return None if off is None else self._reg(off, 4)

    @property
    def pending_bits(self) -> int | None:
        off = self.pending_offset
        return None if off is None else self._reg(off, 4)


class MsixCap(CapView):
    """MSI-X (PCI 3.0 6.8.2): where the table and PBA live, and the control bits."""
    cap_id = R.CAP_ID_MSIX
    FIELDS = ("control", "table_size", "enabled", "function_mask", "table_bir", "table_offset", "pba_bir",
              "pba_offset")
    control_offset = R.MSIX_FLAGS

    @property
    def size(self) -> int:
        return R.CAP_MSIX_SIZEOF

    control = Reg(R.MSIX_FLAGS, 2)
    enabled = Flag(R.MSIX_FLAGS, 2, R.MSIX_FLAGS_ENABLE)
    function_mask = Flag(R.MSIX_FLAGS, 2, R.MSIX_FLAGS_MASKALL)
    table_bir = Reg(R.MSIX_TABLE, 4, R.MSIX_TABLE_BIR)
    table_offset = Reg(R.MSIX_TABLE, 4, R.MSIX_TABLE_OFFSET, shift=False)
    pba_bir = Reg(R.MSIX_PBA, 4, R.MSIX_PBA_BIR)
    pba_offset = Reg(R.MSIX_PBA, 4, R.MSIX_PBA_OFFSET, shift=False)

    @property
    def table_size(self) -> int:
        """Vectors in the table (the register holds N-1)."""
        return (self.control & R.MSIX_FLAGS_QSIZE) + 1

    @staticmethod
    def table_bytes_for(vectors: int) -> int:
        return vectors * R.MSIX_ENTRY_SIZE

    @staticmethod
    def pba_bytes_for(vectors: int) -> int:
        """One pending bit per vector, in whole QWORDs."""
        return (vectors + 63) // 64 * 8

    @property
    def table_bytes(self) -> int:
        return self.table_bytes_for(self.table_size)

    @property
    def pba_bytes(self) -> int:
        return self.pba_bytes_for(self.table_size)


class PcieCap(CapView):
    """PCI Express (PCIe base spec 7.5.3): which register groups exist follows version, port type and slot."""
    cap_id = R.CAP_ID_EXP
    ROOT_TYPES = (R.EXP_TYPE_ROOT_PORT, R.EXP_TYPE_RC_EC)

    @staticmethod
    def size_for(flags: int) -> int:
        """Bytes a PCI Express capability occupies, from its Capabilities register.

        Version 2 and later: all registers through Slot Status 2 (0x3c).  Version 1
        keeps only the registers its port type has: endpoints end after the link
        registers (0x14), ports with a slot after the slot registers (0x1c), root
        ports and event collectors after Root Status (0x24).
        """
        if (flags & R.EXP_FLAGS_VERS) >= 2:
            return R.CAP_EXP_SIZEOF_V2
        if field(flags, R.EXP_FLAGS_TYPE) in PcieCap.ROOT_TYPES:
            return R.EXP_RTSTA + 4
        if flags & R.EXP_FLAGS_SLOT:
            return R.EXP_SLTSTA + 2
        return R.CAP_EXP_ENDPOINT_SIZEOF_V1

    flags = Reg(R.EXP_FLAGS, 2)
    version = Reg(R.EXP_FLAGS, 2, R.EXP_FLAGS_VERS)
    port_type = Reg(R.EXP_FLAGS, 2, R.EXP_FLAGS_TYPE)
    slot_implemented = Flag(R.EXP_FLAGS, 2, R.EXP_FLAGS_SLOT)
    interrupt_message_number = Reg(R.EXP_FLAGS, 2, R.EXP_FLAGS_IRQ)
    devcap = Reg(R.EXP_DEVCAP, 4)
    devctl = Reg(R.EXP_DEVCTL, 2)
    devsta = Reg(R.EXP_DEVSTA, 2)
    # the optional register groups (an AttributeError on a capability without them)
    lnkcap = Reg(R.EXP_LNKCAP, 4, present="has_link")
    lnkctl = Reg(R.EXP_LNKCTL, 2, present="has_link")
    lnksta = Reg(R.EXP_LNKSTA, 2, present="has_link")
    sltcap = Reg(R.EXP_SLTCAP, 4, present="has_slot")
    sltctl = Reg(R.EXP_SLTCTL, 2, present="has_slot")
    sltsta = Reg(R.EXP_SLTSTA, 2, present="has_slot")
    rtctl = Reg(R.EXP_RTCTL, 2, present="has_root")
    rtcap = Reg(R.EXP_RTCAP, 2, present="has_root")
    rtsta = Reg(R.EXP_RTSTA, 4, present="has_root")
    devcap2 = Reg(R.EXP_DEVCAP2, 4, present="has_v2")
    devctl2 = Reg(R.EXP_DEVCTL2, 2, present="has_v2")
    devsta2 = Reg(R.EXP_DEVSTA2, 2, present="has_v2")
    lnkcap2 = Reg(R.EXP_LNKCAP2, 4, present="has_v2")
    lnkctl2 = Reg(R.EXP_LNKCTL2, 2, present="has_v2")
    lnksta2 = Reg(R.EXP_LNKSTA2, 2, present="has_v2")
    sltcap2 = Reg(R.EXP_SLTCAP2, 4, present="has_v2")
    sltctl2 = Reg(R.EXP_SLTCTL2, 2, present="has_v2")
    sltsta2 = Reg(R.EXP_SLTSTA2, 2, present="has_v2")

    @property
    def size(self) -> int:
        return self.size_for(self.flags)

    @property
    def port_type_name(self) -> str | None:
        return R.EXP_TYPE_NAMES.get(self.port_type)

    # which register groups a capability of ``size`` bytes has (``size`` may be a caller's, e.g. an added one)
    def has_link(self, size: int | None = None) -> bool:
        return (self.size if size is None else size) > R.EXP_LNKSTA

    def has_slot(self, size: int | None = None) -> bool:
        return self.slot_implemented and (self.size if size is None else size) > R.EXP_SLTSTA

    def has_root(self, size: int | None = None) -> bool:
        return self.port_type in self.ROOT_TYPES and (self.size if size is None else size) > R.EXP_RTSTA

    def has_v2(self, size: int | None = None) -> bool:
        return (self.size if size is None else size) >= R.CAP_EXP_SIZEOF_V2


#: The typed view class of each standard capability ID that has one.
VIEWS: dict[int, type[CapView]] = {v.cap_id: v for v in (PmCap, MsiCap, MsixCap, PcieCap)}
