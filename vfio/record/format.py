"""The device record file: codec for ``records/FORMAT.md``.

A record file is a header followed by typed, length-prefixed records (the
layout proposed on qemu-devel in 2011 for "device fd files"), some of which
(REGION, INTERRUPT) nest sub-records.  This module reads and writes it:

* :func:`parse` turns bytes (or an mmap) into a :class:`DeviceRecord`, checking
  everything ``FORMAT.md`` says a reader must refuse and raising
  :class:`RecordFormatError` with the byte offset and the record type.
* :func:`write` turns a :class:`DeviceRecord` back into bytes.  Round trips are
  byte-exact: ``write(parse(b)) == b`` for every file ``parse`` accepts
  (unknown records are kept raw, in place) and ``parse(write(x)) == x``.
* :func:`open_record_file` is the one way a record file is opened (by
  :func:`load`, :class:`MappedRecord`, replay, ``vfio-inspect FILE``,
  ``vfio-capture --show``): a regular file only, never blocking (a FIFO is
  refused, not waited on), no larger than the size limit, checked before
  anything is read.

The packed little-endian layouts are declared once, with cstruct, in the
``_L_*`` classes below -- field for field the tables of ``FORMAT.md``.  cstruct
builds an object per decode, about 100 us a record; a record file of thousands
of records (a BAR split into pages, many notes) would take a second.  So each
declaration is compiled at import time into a :class:`struct.Struct` from the
field formats cstruct itself computed (:func:`_compile`), and the hot path uses
that; ``tests/unit/test_record_format.py`` checks the two agree.

Each record type is one row of :data:`RECORD_TYPES` (:class:`RecordType`):
its number and name, model class, layout, what follows the fixed part, where
it may appear (top level, or under which parents), how many a reader accepts,
and its decode and encode functions.  :func:`parse` and :func:`write` both
dispatch through that table, and ``TYPE_NAMES`` is derived from it, so a new
record type is a row (plus its model class, layout and two small functions).
Types without a row are kept as :class:`UnknownRecord` and written back as
they were.
"""

from __future__ import annotations

import enum
import mmap
import os
import stat
import struct
from dataclasses import dataclass, field
from typing import NamedTuple, Union

import cstruct

from ..errors import Error

# ---------------------------------------------------------------------------
# constants (FORMAT.md)
# ---------------------------------------------------------------------------
MAGIC = b"VFIOREC\x00"
VERSION_MAJOR = 1
VERSION_MINOR = 1
#: The minor version that introduced the cassette record types (0x8005 to 0x800E);
#: files without them are written as 1.0, as before.
CASSETTE_MINOR = 1
ALIGN = 8
#: Largest file :func:`parse`/:func:`load` accept unless told otherwise.
DEFAULT_MAX_FILE_SIZE = 256 << 20
#: Most records (top-level and sub-records together) :func:`parse` accepts
#: unless told otherwise: each costs a Python object, so this bounds the
#: model's memory by a small multiple of the file's size (a 256 MiB BAR in
#: 4 KiB pieces is 65,536 records).
DEFAULT_MAX_RECORDS = 1 << 16
#: Levels of nesting: top-level records (1) and their sub-records (2).
MAX_DEPTH = 2

# record types: the RFC's numbering ...
REGION = 1
DTPATH = 2
DTINDEX = 3
INTERRUPT = 4
PCI_CONFIG_SPACE = 5
PCI_BAR_INFO = 6
PCI_INFO = 7
# ... and the extensions' own range (0x8000 to 0xFFFF)
DEVICE_INFO = 0x8001
REGION_INFO = 0x8002
REGION_DATA = 0x8003
NOTE = 0x8004
# ... and a device session (a "cassette", version 1.1): what a program did with
# the device and what the device did, in order (FORMAT.md, "Cassettes")
CASSETTE = 0x8005
ACCESSES = 0x8006
ACCESS_DATA = 0x8007
IRQ_SET = 0x8008
IRQ_EVENT = 0x8009
RESET_EVENT = 0x800A
DMA_MAP = 0x800B
DMA_UNMAP = 0x800C
DMA_WRITE = 0x800D
MARKER = 0x800E

# ACCESSES entries: op
ACCESS_READ = 0
ACCESS_WRITE = 1
ACCESS_WIDTHS = (1, 2, 4, 8)
# ACCESS_DATA flags
ACCESS_DATA_WRITE = 1 << 0
# DMA_MAP flags: what the device may do with the mapping
DMA_READ = 1 << 0
DMA_WRITE_OK = 1 << 1
# RESET_EVENT kind
RESET_DEVICE = 0
RESET_HOT = 1

# REGION flags (bits 0-2 are VFIO_REGION_INFO_FLAG_READ/WRITE/MMAP)
REGION_READ = 1 << 0
REGION_WRITE = 1 << 1
REGION_MMAP = 1 << 2
REGION_ROM = 1 << 3
REGION_PHYS = 1 << 4
_REGION_VFIO_BITS = REGION_READ | REGION_WRITE | REGION_MMAP

# INTERRUPT flags are vfio_irq_info flags
IRQ_EVENTFD = 1 << 0
IRQ_MASKABLE = 1 << 1
IRQ_AUTOMASKED = 1 << 2
IRQ_NORESIZE = 1 << 3

# DTINDEX prop_type
DT_PROP_REG = 0
DT_PROP_RANGES = 1
DT_PROP_INTERRUPTS = 2
DT_PROP_INTERRUPT_MAP = 3

# PCI_BAR_INFO
BAR_PIO = 0
BAR_MMIO32 = 1
BAR_MMIO64 = 2
BAR_ROM = 3
BAR_PREFETCHABLE = 1 << 0


def type_name(rtype: int | None) -> str:
    """A record type's name as FORMAT.md spells it (``TYPE_NAMES``, from the record table)."""
    if rtype is None:
        return "file header"
    return TYPE_NAMES.get(rtype, f"unknown type {rtype:#x}")


class RecordFormatError(Error, ValueError):
    """A record file that breaks ``FORMAT.md`` (or a reader's limits): a
    toolkit error (``vfio.errors.Error``) and a ``ValueError``.

    ``offset`` is the byte offset in the file of the thing at fault (``None``
    when the fault is the file as a whole: not a regular file, too large),
    ``record_type`` the type of the record it belongs to (``None`` for the file
    header), ``path`` the file name when known.
    """

    def __init__(self, offset: int | None, record_type: int | None, problem: str, path: str | None = None):
        self.offset = offset
        self.record_type = record_type
        self.problem = problem
        self.path = path
        where = f"{path}: " if path else ""
        if offset is None:
            super().__init__(f"{where}{problem}")
        else:
            super().__init__(f"{where}offset {offset:#x}: {type_name(record_type)}: {problem}")


# ---------------------------------------------------------------------------
# layouts (cstruct), compiled to struct.Struct for decoding speed
# ---------------------------------------------------------------------------
class _Layout(cstruct.MemCStruct):
    __byte_order__ = cstruct.LITTLE_ENDIAN
    __abstract__ = True


_HDR = "uint32_t type; uint32_t rec_len; uint32_t flags;"  # every record starts so


class _L_FileHeader(_Layout):
    __def__ = """struct {
        char     magic[8];
        uint16_t version_major;
        uint16_t version_minor;
        uint32_t flags;
        uint32_t header_len;
        uint32_t reserved;
        uint64_t file_len;
    }"""


class _L_RecordHeader(_Layout):
    __def__ = "struct { " + _HDR + " }"


class _L_Region(_Layout):            # type 1; cstruct reserves "size", hence "len"
    __def__ = "struct { " + _HDR + """
        uint32_t index;
        uint64_t offset;
        uint64_t len;
        uint64_t addr;
    }"""


class _L_DtIndex(_Layout):           # type 3
    __def__ = "struct { " + _HDR + " uint32_t prop_type; uint32_t prop_index; }"


class _L_Interrupt(_Layout):         # type 4
    __def__ = "struct { " + _HDR + " uint32_t index; uint32_t count; uint32_t reserved; }"


class _L_PciBarInfo(_Layout):        # type 6
    __def__ = "struct { " + _HDR + " uint32_t bar_type; uint32_t bar_index; }"


class _L_PciInfo(_Layout):           # type 7
    __def__ = "struct { " + _HDR + """
        uint32_t domain;
        uint8_t  bus;
        uint8_t  device;
        uint8_t  function;
        uint8_t  reserved;
    }"""


class _L_DeviceInfo(_Layout):        # type 0x8001, followed by the capability chain
    __def__ = "struct { " + _HDR + " uint32_t vfio_flags; uint32_t num_regions; uint32_t num_irqs; }"


class _L_RegionInfo(_Layout):        # type 0x8002, followed by the capability chain
    __def__ = "struct { " + _HDR + " uint32_t vfio_flags; }"


class _L_RegionData(_Layout):        # type 0x8003, followed by the data
    __def__ = "struct { " + _HDR + " uint32_t reserved; uint64_t offset; }"


class _L_Accesses(_Layout):          # type 0x8006, followed by 24-byte entries
    __def__ = "struct { " + _HDR + " uint32_t reserved; }"


class _L_AccessEntry(_Layout):       # one entry of ACCESSES (no record header)
    __def__ = """struct {
        uint8_t  op;
        uint8_t  width;
        uint16_t reserved;
        uint32_t index;
        uint64_t offset;
        uint64_t value;
    }"""


class _L_AccessData(_Layout):        # type 0x8007, followed by the data
    __def__ = "struct { " + _HDR + " uint32_t index; uint64_t offset; }"


class _L_IrqSet(_Layout):            # type 0x8008, followed by the SET_IRQS data
    __def__ = "struct { " + _HDR + """
        uint32_t index;
        uint64_t at;
        uint32_t start;
        uint32_t count;
        uint32_t irq_flags;
        uint32_t reserved;
    }"""


class _L_IrqEvent(_Layout):          # type 0x8009
    __def__ = "struct { " + _HDR + " uint32_t index; uint64_t at; uint32_t vector; uint32_t reserved; }"


class _L_ResetEvent(_Layout):        # type 0x800A
    __def__ = "struct { " + _HDR + " uint32_t kind; uint64_t at; }"


class _L_DmaMap(_Layout):            # types 0x800B and 0x800C
    __def__ = "struct { " + _HDR + " uint32_t reserved; uint64_t at; uint64_t iova; uint64_t len; }"


class _L_DmaWrite(_Layout):          # type 0x800D, followed by the bytes
    __def__ = "struct { " + _HDR + " uint32_t reserved; uint64_t at; uint64_t iova; }"


class _L_Marker(_Layout):            # type 0x800E, followed by the text
    __def__ = "struct { " + _HDR + " uint32_t reserved; uint64_t at; }"


LAYOUTS = (_L_FileHeader, _L_RecordHeader, _L_Region, _L_DtIndex, _L_Interrupt, _L_PciBarInfo,
           _L_PciInfo, _L_DeviceInfo, _L_RegionInfo, _L_RegionData, _L_Accesses, _L_AccessEntry,
           _L_AccessData, _L_IrqSet, _L_IrqEvent, _L_ResetEvent, _L_DmaMap, _L_DmaWrite, _L_Marker)


def _compile(layout) -> struct.Struct:
    """The struct.Struct equivalent of a cstruct declaration, built from the
    per-field formats cstruct computed (so the layout is spelled once)."""
    fmt = "<"
    pos = 0
    for name, ft in layout.__fields_types__.items():
        if ft.offset != pos or ft.padding:
            raise AssertionError(f"{layout.__name__}.{name}: not packed at {pos}")
        fmt += ft.fmt.lstrip("<")
        pos += ft.vsize
    st = struct.Struct(fmt)
    if st.size != layout.__size__:
        raise AssertionError(f"{layout.__name__}: struct size {st.size} != cstruct size {layout.__size__}")
    return st


STRUCTS = {layout: _compile(layout) for layout in LAYOUTS}
_S_FILE = STRUCTS[_L_FileHeader]
_S_HDR = STRUCTS[_L_RecordHeader]
_S_REGION = STRUCTS[_L_Region]
_S_DTINDEX = STRUCTS[_L_DtIndex]
_S_INTERRUPT = STRUCTS[_L_Interrupt]
_S_BAR = STRUCTS[_L_PciBarInfo]
_S_PCI = STRUCTS[_L_PciInfo]
_S_DEVINFO = STRUCTS[_L_DeviceInfo]
_S_REGINFO = STRUCTS[_L_RegionInfo]
_S_DATA = STRUCTS[_L_RegionData]

_S_ACCESSES = STRUCTS[_L_Accesses]
_S_ENTRY = STRUCTS[_L_AccessEntry]
ACCESS_ENTRY_LEN = _S_ENTRY.size        # 24
_S_ACCDATA = STRUCTS[_L_AccessData]
_S_IRQSET = STRUCTS[_L_IrqSet]
_S_IRQEV = STRUCTS[_L_IrqEvent]
_S_RESET = STRUCTS[_L_ResetEvent]
_S_DMAMAP = STRUCTS[_L_DmaMap]
_S_DMAWR = STRUCTS[_L_DmaWrite]
_S_MARKER = STRUCTS[_L_Marker]

_S_DATA_UNPACK = _S_DATA.unpack_from
_DATA_SIZE = _S_DATA.size


def _body(layout):
    """``unpack_from(buf, pos + 12)`` of a layout's fields after the record
    header: the hot decoders take only what they keep (same formats, compiled
    from the same declaration)."""
    return struct.Struct("<" + STRUCTS[layout].format.lstrip("<")[3:]).unpack_from


_U_REGION = _body(_L_Region)            # index, offset, len, addr
_REGION_SIZE, _INTERRUPT_SIZE, _REGINFO_SIZE = _S_REGION.size, _S_INTERRUPT.size, _S_REGINFO.size
_U_BAR = _body(_L_PciBarInfo)           # bar_type, bar_index
_U_REGINFO = _body(_L_RegionInfo)       # (vfio_flags,)
_U_DATA = _body(_L_RegionData)          # reserved, offset
_U_INTERRUPT = _body(_L_Interrupt)      # index, count, reserved
_U_DTINDEX = _body(_L_DtIndex)          # prop_type, prop_index
#: The hot decoders build their (slots) model objects with ``_new(cls)`` and
#: set every field, instead of calling the dataclass ``__init__`` from C
#: (half the cost of a record); ``test_codec_table`` compares each decoded
#: sample with the one built through ``__init__``.
_new = object.__new__
#: ``_PAD[k]``: the k zero bytes of padding a record may be followed by
_PAD = tuple(bytes(k) for k in range(ALIGN))

FILE_HEADER_LEN = _S_FILE.size          # 32
RECORD_HEADER_LEN = _S_HDR.size         # 12
_ZEROS = bytes(64)


def _align(n: int) -> int:
    return (n + ALIGN - 1) & ~(ALIGN - 1)


# ---------------------------------------------------------------------------
# the in-memory model
# ---------------------------------------------------------------------------
Bytes = Union[bytes, memoryview]


@dataclass(slots=True)
class DtPath:
    """Device-tree path of the node a region or interrupt comes from (type 2)."""
    path: str
    flags: int = 0
    type = DTPATH


@dataclass(slots=True)
class DtIndex:
    """Which entry of which device-tree property (type 3)."""
    prop_type: int
    prop_index: int
    flags: int = 0
    type = DTINDEX


@dataclass(slots=True)
class PciConfigSpace:
    """Marks its region as PCI configuration space (type 5)."""
    flags: int = 0
    type = PCI_CONFIG_SPACE


@dataclass(slots=True)
class PciBarInfo:
    """Which BAR a region is and of what kind (type 6)."""
    bar_type: int
    bar_index: int
    flags: int = 0
    type = PCI_BAR_INFO

    @property
    def prefetchable(self) -> bool:
        return bool(self.flags & BAR_PREFETCHABLE)


@dataclass(slots=True)
class RegionInfo:
    """The kernel's own ``vfio_region_info`` flags and capability chain (0x8002).

    ``caps`` are the bytes the kernel wrote after the 32-byte header; their
    ``next`` offsets count from the start of the info buffer."""
    vfio_flags: int
    caps: bytes = b""
    flags: int = 0
    type = REGION_INFO


@dataclass(slots=True)
class RegionData:
    """Captured contents of part of a region (0x8003).  In a file parsed with
    ``lazy=True`` ``data`` is a memoryview into the mapped file."""
    offset: int
    data: Bytes
    flags: int = 0
    type = REGION_DATA


@dataclass(slots=True)
class UnknownRecord:
    """A record of a type this reader does not know: its raw bytes (header
    included, padding excluded), written back unchanged."""
    type: int
    raw: bytes

    @property
    def flags(self) -> int:
        return _S_HDR.unpack_from(self.raw, 0)[2]


@dataclass(slots=True)
class Region:
    """One VFIO region (type 1) and its sub-records, in file order."""
    index: int
    flags: int = 0
    offset: int = 0
    size: int = 0
    addr: int = 0
    children: list = field(default_factory=list)
    type = REGION

    def _child(self, cls):
        for c in self.children:
            if type(c) is cls:
                return c
        return None

    @property
    def info(self) -> RegionInfo | None:
        return self._child(RegionInfo)

    @property
    def bar(self) -> PciBarInfo | None:
        return self._child(PciBarInfo)

    @property
    def is_config_space(self) -> bool:
        return self._child(PciConfigSpace) is not None

    @property
    def data(self) -> list[RegionData]:
        return [c for c in self.children if type(c) is RegionData]

    @property
    def dt_path(self) -> DtPath | None:
        return self._child(DtPath)

    @property
    def vfio_flags(self) -> int:
        """The kernel's region flags: from REGION_INFO if captured, else the
        READ/WRITE/MMAP bits of the RFC flags."""
        info = self.info
        return info.vfio_flags if info is not None else self.flags & _REGION_VFIO_BITS

    def contents(self, offset: int, length: int) -> bytes:
        """Captured bytes ``[offset, offset+length)``; uncaptured bytes read as zero."""
        out = bytearray(length)
        for d in self.data:
            lo, hi = max(offset, d.offset), min(offset + length, d.offset + len(d.data))
            if lo < hi:
                out[lo - offset:hi - offset] = d.data[lo - d.offset:hi - d.offset]
        return bytes(out)


@dataclass(slots=True)
class Interrupt:
    """One IRQ index (type 4): ``flags`` are the ``vfio_irq_info`` flags."""
    index: int
    flags: int = 0
    count: int = 0
    children: list = field(default_factory=list)
    type = INTERRUPT


@dataclass(slots=True)
class PciInfo:
    """The device's PCI address (type 7)."""
    domain: int
    bus: int
    device: int
    function: int
    flags: int = 0
    type = PCI_INFO

    @property
    def bdf(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function:x}"


@dataclass(slots=True)
class DeviceInfo:
    """The kernel's ``vfio_device_info`` (0x8001): flags, counts and the raw
    capability chain (bytes after the 24-byte header, offsets from its start)."""
    vfio_flags: int
    num_regions: int
    num_irqs: int
    caps: bytes = b""
    flags: int = 0
    type = DEVICE_INFO


@dataclass(slots=True)
class Note:
    """Free-form provenance text (0x8004)."""
    text: str
    flags: int = 0
    type = NOTE


# ---- cassettes (1.1): a device session, in order --------------------------------------
class Access(NamedTuple):
    """One register access of a cassette (an entry of ACCESSES): ``op`` ACCESS_READ
    or ACCESS_WRITE, ``width`` 1/2/4/8 bytes, region ``index``, ``offset`` in the
    region, ``value`` read or written."""
    op: int
    width: int
    index: int
    offset: int
    value: int

    @property
    def write(self) -> bool:
        return self.op == ACCESS_WRITE


@dataclass(slots=True)
class Cassette:
    """Marks the file as a cassette (0x8005): what was recorded (a command line)."""
    text: str
    flags: int = 0
    type = CASSETTE


@dataclass(slots=True)
class Accesses:
    """A run of 1/2/4/8-byte register accesses (0x8006), in program order."""
    entries: list
    flags: int = 0
    type = ACCESSES


@dataclass(slots=True)
class AccessData:
    """One access of another length (0x8007): a bulk read or write of ``data``
    at ``offset`` of region ``index``; flag ACCESS_DATA_WRITE for a write."""
    index: int
    offset: int
    data: bytes
    flags: int = 0
    type = ACCESS_DATA

    @property
    def write(self) -> bool:
        return bool(self.flags & ACCESS_DATA_WRITE)


@dataclass(slots=True)
class IrqSet:
    """A VFIO_DEVICE_SET_IRQS call (0x8008) after ``at`` accesses; ``data`` as the
    call gave it, except eventfd numbers: 0 for an eventfd, -1 for none."""
    index: int
    at: int
    start: int
    count: int
    irq_flags: int
    data: bytes = b""
    flags: int = 0
    type = IRQ_SET


@dataclass(slots=True)
class IrqEvent:
    """The device signalled ``vector`` of IRQ ``index`` (0x8009) after ``at`` accesses."""
    index: int
    at: int
    vector: int
    flags: int = 0
    type = IRQ_EVENT


@dataclass(slots=True)
class ResetEvent:
    """A reset (0x800A) after ``at`` accesses: RESET_DEVICE or RESET_HOT."""
    kind: int
    at: int
    flags: int = 0
    type = RESET_EVENT


@dataclass(slots=True)
class DmaMap:
    """Memory mapped for DMA (0x800B) after ``at`` accesses; flags DMA_READ / DMA_WRITE_OK."""
    at: int
    iova: int
    size: int
    flags: int = 0
    type = DMA_MAP


@dataclass(slots=True)
class DmaUnmap:
    """A DMA mapping removed (0x800C) after ``at`` accesses."""
    at: int
    iova: int
    size: int
    flags: int = 0
    type = DMA_UNMAP


@dataclass(slots=True)
class DmaWrite:
    """Bytes the device wrote to memory at ``iova`` (0x800D), seen after ``at`` accesses."""
    at: int
    iova: int
    data: bytes
    flags: int = 0
    type = DMA_WRITE


@dataclass(slots=True)
class Marker:
    """A program's marker (0x800E) after ``at`` accesses, like mmiotrace's."""
    at: int
    text: str
    flags: int = 0
    type = MARKER


@dataclass
class DeviceRecord:
    """A whole record file: top-level records in file order, plus the header
    fields a newer minor version may have set (kept for byte-exact write-back)."""
    records: list = field(default_factory=list)
    #: 0 unless set: a cassette's writer sets CASSETTE_MINOR (FORMAT.md, "Versions")
    version_minor: int = 0
    header_flags: int = 0
    header_extra: bytes = b""
    #: Byte offset in the file of each top-level record (parallel to
    #: ``records``), set by :func:`parse` so later checks (replay's) can name
    #: where a record is; empty for a record built in memory.
    offsets: list = field(default_factory=list, compare=False, repr=False)
    #: The file it was read from, when known (for error messages).
    path: str | None = field(default=None, compare=False, repr=False)

    def offset_of(self, rec) -> int | None:
        """File offset of top-level record ``rec`` (None when not known)."""
        for i, r in enumerate(self.records):
            if r is rec:
                return self.offsets[i] if i < len(self.offsets) else None
        return None

    def _first(self, cls):
        for r in self.records:
            if type(r) is cls:
                return r
        return None

    @property
    def pci_info(self) -> PciInfo | None:
        return self._first(PciInfo)

    @property
    def device_info(self) -> DeviceInfo | None:
        return self._first(DeviceInfo)

    @property
    def regions(self) -> dict[int, Region]:
        """Regions keyed by VFIO region index."""
        return {r.index: r for r in self.records if type(r) is Region}

    @property
    def interrupts(self) -> dict[int, Interrupt]:
        """Interrupts keyed by VFIO IRQ index."""
        return {r.index: r for r in self.records if type(r) is Interrupt}

    @property
    def notes(self) -> list[str]:
        return [r.text for r in self.records if type(r) is Note]

    @property
    def cassette(self) -> Cassette | None:
        """The CASSETTE record: present when the file is a recorded session."""
        return self._first(Cassette)

    @property
    def config_region(self) -> Region | None:
        for r in self.records:
            if type(r) is Region and r.is_config_space:
                return r
        return None


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------
_TOP = 0   # "parent type" of a top-level record


class _Reader:
    """One parse: the buffer, options and the file-wide uniqueness checks.

    The walk (headers, lengths, padding, limits, placement, fixed sizes,
    once-per-file) is generic; what a record holds is its row's ``decode``."""

    def __init__(self, buf, path: str | None, lazy: bool, max_records: int = DEFAULT_MAX_RECORDS):
        # Slices of bytes and of an mmap are bytes, which the decoders keep as they
        # are (bytes(x) of a bytes object costs as much as decoding a small record);
        # any other buffer (bytearray, memoryview) is read from one bytes copy.
        if not isinstance(buf, (bytes, mmap.mmap)):
            buf = bytes(buf)
        self.buf = buf
        self.path = path
        self.lazy = lazy
        self.max_records = max_records
        self.count = 0
        #: no file of this size can hold more records than the limit (each takes 12
        #: bytes or more of its own), so _dec_region's walk need not count them
        self.unlimited = len(buf) // RECORD_HEADER_LEN <= max_records
        self.views: list[memoryview] = []
        self.region_indexes: set[int] = set()
        self.irq_indexes: set[int] = set()
        self.singletons: set[int] = set()

    def err(self, offset: int, rtype: int | None, problem: str) -> RecordFormatError:
        return RecordFormatError(offset, rtype, problem, self.path)

    def payload(self, a: int, b: int, copy: bool) -> Bytes:
        if copy or not self.lazy:
            return bytes(self.buf[a:b])
        v = memoryview(self.buf)[a:b]
        self.views.append(v)
        return v

    def string(self, pos: int, rtype: int, a: int, b: int) -> str:
        raw = bytes(self.buf[a:b])
        nul = raw.find(0)
        if nul < 0:
            raise self.err(pos, rtype, "string without NUL terminator")
        if nul != len(raw) - 1:
            raise self.err(a + nul + 1, rtype, f"{len(raw) - nul - 1} bytes after the string's NUL (rec_len too long)")
        try:
            return raw[:-1].decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.err(a + e.start, rtype, "string is not UTF-8") from None

    def padding(self, a: int, b: int, rtype: int) -> None:
        if b > a and self.buf[a:b] != _ZEROS[:b - a]:
            raise self.err(a, rtype, f"non-zero padding after the record ({b - a} bytes)")

    def sequence(self, pos: int, end: int, parent: int, depth: int, where: list | None = None) -> list:
        """Records from ``pos`` to ``end`` (a parent's end or the file's end);
        their offsets are appended to ``where`` when given.

        This loop is the decoder's hot path (with _dec_region's walk of a
        region's sub-records), so what :meth:`checked` and :meth:`record` check
        per record is one test here, against the parent's table of allowed
        types (:data:`_ALLOWED`); a record that fails it goes to them, which
        make the checks in their order and stay the one place their messages
        are worded."""
        out = []
        append = out.append
        buf = self.buf
        unpack = _S_HDR_UNPACK
        get = _ALLOWED[parent].get
        max_records = self.max_records
        count = self.count          # kept here, and in self.count around a nested read
        while pos < end:
            try:
                rtype, rec_len, flags = unpack(buf, pos)
            except struct.error:                # under 12 bytes left: checked() words it
                rtype = rec_len = flags = 0
            rend = pos + rec_len
            count += 1
            row = get(rtype)
            # One test for the common case: a type allowed here, of its size (so at least
            # a header), inside the parent, under the limit.  Anything else (truncated,
            # bad length, over the limit, unknown, misplaced, once per file) goes to
            # checked(), which makes the checks one by one in their order.
            if row is not None and row[0] <= rec_len <= row[1] and rend <= end and count <= max_records:
                if row[3]:                      # it reads sub-records, which count too
                    self.count = count
                    append(row[2](self, pos, rec_len, flags, depth))
                    count = self.count
                else:
                    append(row[2](self, pos, rec_len, flags, depth))
            else:
                self.count = count
                append(self.checked(pos, end, rtype, rec_len, flags, parent, depth))
                count = self.count
            if where is not None:
                where.append(pos)
            nxt = (rend + 7) & -8
            if nxt < end:                       # another record follows
                if nxt != rend and buf[rend:nxt] != _PAD[nxt - rend]:
                    self.padding(rend, nxt, rtype)
                pos = nxt
                continue
            if parent:                          # the last sub-record ends the parent exactly
                if rend != end:
                    raise self.err(rend, parent, "parent ends inside the padding after its last sub-record")
            elif nxt > end:
                raise self.err(rend, rtype, "file ends inside the padding after the last record")
            elif nxt != rend and buf[rend:nxt] != _PAD[nxt - rend]:
                self.padding(rend, nxt, rtype)
            break
        self.count = count
        return out

    def checked(self, pos: int, end: int, rtype: int, rec_len: int, flags: int, parent: int, depth: int):
        """:meth:`record`, after the checks :meth:`sequence` folds into one test, made
        one by one in their order (``self.count`` counts this record)."""
        if end - pos < RECORD_HEADER_LEN:
            raise self.err(pos, parent or None, f"truncated record header: {end - pos} bytes left "
                           f"{'in the parent' if parent else 'in the file'}")
        if rec_len < RECORD_HEADER_LEN or pos + rec_len > end:
            self.bad_length(pos, rtype, rec_len, end, parent)
        if self.count > self.max_records:
            raise self.err(pos, rtype, f"more than {self.max_records} records (the reader's limit)")
        return self.record(pos, rtype, rec_len, flags, parent, depth)

    def bad_length(self, pos: int, rtype: int, rec_len: int, end: int, parent: int):
        if rec_len < RECORD_HEADER_LEN:
            raise self.err(pos, rtype, f"rec_len {rec_len} smaller than the 12-byte record header")
        raise self.err(pos, rtype, f"rec_len {rec_len} runs {pos + rec_len - end} bytes past the end of "
                       f"{'its parent ' + type_name(parent) if parent else 'the file'}")

    def record(self, pos: int, rtype: int, rec_len: int, flags: int, parent: int, depth: int):
        row = _BY_TYPE.get(rtype)
        if row is None:
            return UnknownRecord(rtype, bytes(self.buf[pos:pos + rec_len]))
        if parent not in row.places:
            if row.nests:
                raise self.err(pos, rtype, f"nesting too deep: a {row.name} at level {depth} "
                               f"(at most {MAX_DEPTH} levels; {row.name} only at the top)")
            where = f"under {type_name(parent)}" if parent else "at the top level"
            raise self.err(pos, rtype, f"sub-record {where}; it belongs under "
                           + " or ".join(type_name(p) for p in row.places))
        if not row.size <= rec_len <= row.max_len:
            size = row.size
            if rec_len < size:
                raise self.err(pos, rtype, f"rec_len {rec_len} smaller than the fixed part ({size} bytes)")
            raise self.err(pos, rtype, f"rec_len {rec_len} is not the record's size ({size} bytes)")
        if row.once_per_file:
            if rtype in self.singletons:
                raise self.err(pos, rtype, f"a second {row.name} record (at most one per file)")
            self.singletons.add(rtype)
        return row.decode(self, pos, rec_len, flags, depth)

    def reserved(self, off: int, rtype: int, value: int) -> None:
        if value:
            raise self.err(off, rtype, f"reserved field is {value:#x}, must be 0")


# ---------------------------------------------------------------------------
# writing helpers
# ---------------------------------------------------------------------------
def _hdr(rtype: int, length: int, flags: int) -> bytes:
    return _S_HDR.pack(rtype, length, flags)


def _cstring(s: str) -> bytes:
    b = s.encode("utf-8")
    if b"\x00" in b:
        raise ValueError(f"string {s!r} contains a NUL")
    return b + b"\x00"


def _join(parts: list[bytes]) -> bytes:
    """Sub-records one after another, 8-aligned, no padding after the last."""
    out = bytearray()
    for p in parts:
        out += _ZEROS[:_align(len(out)) - len(out)]
        out += p
    return bytes(out)


# ---------------------------------------------------------------------------
# the record types: one row each, used by parse and write alike
# ---------------------------------------------------------------------------
# A decoder is ``decode(reader, pos, rec_len, flags, depth) -> record``; it runs
# after the reader has checked the row's placement, fixed size (rec_len at
# least ``size``, exactly ``size`` when nothing follows) and once-per-file
# rule, and checks what is particular to the type (reserved fields, ranges,
# indexes unique in the file, its sub-records).  An encoder is
# ``encode(record) -> bytes``: header included, padding excluded.
class _Tail(enum.Enum):
    """What follows a record's fixed part, up to ``rec_len``."""
    NONE = "nothing"                # rec_len is exactly the fixed part
    SUBRECORDS = "sub-records"      # a container: REGION, INTERRUPT
    BYTES = "bytes"                 # a capability chain, region data
    STRING = "string"               # UTF-8, NUL-terminated


class _Once(enum.Enum):
    """How many of a type a reader accepts.  PER_FILE is checked by the reader
    before decoding; PER_PARENT by the parent's decoder once its sub-records
    are read (REGION's: the only parent such types have)."""
    PER_FILE = "at most one per file"
    PER_PARENT = "at most one per parent"


class RecordType:
    """One row of the record table: everything the codec knows of a record type."""

    __slots__ = ("rtype", "name", "cls", "layout", "struct", "size", "tail", "places", "once",
                 "decode", "encode", "exact", "nests", "max_len", "once_per_file")

    def __init__(self, rtype, name, cls, layout, tail, places, decode, encode, once=None):
        self.rtype = rtype              #: the type number (FORMAT.md)
        self.name = name                #: as FORMAT.md and error messages spell it
        self.cls = cls                  #: the model class (its ``type`` is ``rtype``)
        self.layout = layout            #: cstruct declaration of the fixed part
        self.struct = STRUCTS[layout]   #: ... compiled
        self.size = self.struct.size
        self.tail = tail                #: what follows the fixed part (:class:`_Tail`)
        self.places = places            #: parent types it may appear under (_TOP: the top level)
        self.once = once                #: a :class:`_Once`, or None (any number)
        self.decode = decode
        self.encode = encode
        self.exact = tail is _Tail.NONE
        self.nests = tail is _Tail.SUBRECORDS
        self.max_len = self.size if self.exact else 0xFFFFFFFF     # rec_len is a u32
        self.once_per_file = once is _Once.PER_FILE

    def __repr__(self) -> str:
        return f"<RecordType {self.name} {self.rtype:#x}>"


def _dec_region(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Region:
    buf = rd.buf
    index, offset, size, addr = _U_REGION(buf, pos + RECORD_HEADER_LEN)
    if index in rd.region_indexes:
        raise rd.err(pos, REGION, f"duplicate region index {index}")
    rd.region_indexes.add(index)
    kids = []
    p = pos + _REGION_SIZE
    end = pos + rec_len
    # A region's sub-records are most of a file's records, so the common case is
    # walked here in one pass that also applies the region's rules: every record
    # of a type allowed under a REGION and of its size, inside the region, zero
    # padding; each once-per-parent type at most once, REGION_INFO's flags
    # agreeing; data in offset order, not overlapping, inside the region; the
    # reader's record limit out of reach.  At anything else it stops, and the
    # generic walk (rd.sequence) and _region_fault go over the region again,
    # refusing what is wrong in their order and wording (or accepting what is
    # only unusual: an unknown sub-record, data out of order).
    #
    # The three sub-records every captured region has (REGION_DATA, PCI_BAR_INFO,
    # REGION_INFO) are decoded right here, as their rows' decoders (_dec_data,
    # _dec_bar, _dec_reginfo) would, with the same layouts: a call per record is
    # a tenth of a decode (bench/bench_record_decode.py).  Whatever these lines do
    # not settle -- a reserved field set, lazy data -- goes through the row's
    # decoder, and test_perfsafe_record_walk holds this walk to the generic one
    # (emptying _REGION_KIDS turns the whole walk off).
    if p < end and _REGION_KIDS and (rd.unlimited or rd.count + (end - p) // RECORD_HEADER_LEN <= rd.max_records):
        append = kids.append
        get = _REGION_KIDS.get
        kid_depth = depth + 1
        copy_data = not rd.lazy
        seen = 0                            # the once-per-parent types seen (their bits)
        last = 0                            # end of the data so far
        while True:
            try:
                rtype, rlen, rflags = _S_HDR_UNPACK(buf, p)
            except struct.error:
                break
            rend = p + rlen
            if rend > end:
                break
            if rtype == REGION_DATA and rlen >= _DATA_SIZE and copy_data:
                reserved, offset_ = _U_DATA(buf, p + RECORD_HEADER_LEN)
                if reserved or offset_ < last:
                    break
                kid = _new(RegionData)
                kid.offset = offset_
                kid.data = buf[p + _DATA_SIZE:rend]         # bytes (see _Reader)
                kid.flags = rflags
                append(kid)
                last = offset_ + rlen - _DATA_SIZE
            elif rtype == PCI_BAR_INFO and rlen == _BAR_SIZE:
                if seen & _BAR_BIT:
                    break
                seen |= _BAR_BIT
                kid = _new(PciBarInfo)
                kid.bar_type, kid.bar_index = _U_BAR(buf, p + RECORD_HEADER_LEN)
                kid.flags = rflags
                append(kid)
            elif rtype == REGION_INFO and rlen >= _REGINFO_SIZE:
                vfio_flags, = _U_REGINFO(buf, p + RECORD_HEADER_LEN)
                if seen & _REGINFO_BIT or (vfio_flags ^ flags) & _REGION_VFIO_BITS:
                    break
                seen |= _REGINFO_BIT
                kid = _new(RegionInfo)
                kid.vfio_flags = vfio_flags
                kid.caps = buf[p + _REGINFO_SIZE:rend]      # bytes (see _Reader)
                kid.flags = rflags
                append(kid)
            else:
                size_min, size_max, decode, once_bit = get(rtype, _NO_KID)
                if not size_min <= rlen <= size_max:
                    break
                kid = decode(rd, p, rlen, rflags, kid_depth)
                append(kid)
                if once_bit:
                    if seen & once_bit or rtype == REGION_INFO and (kid.vfio_flags ^ flags) & _REGION_VFIO_BITS:
                        break
                    seen |= once_bit
                elif rtype == REGION_DATA:
                    if kid.offset < last:
                        break
                    last = kid.offset + rlen - _DATA_SIZE
            if rend == end:
                if last <= size:
                    if not rd.unlimited:
                        rd.count += len(kids)
                    p = end
                break
            nxt = (rend + ALIGN - 1) & -ALIGN
            if nxt >= end or nxt != rend and buf[rend:nxt] != _PAD[nxt - rend]:
                break
            p = nxt
    if p != end:
        kids = rd.sequence(pos + _S_REGION.size, end, REGION, depth + 1)
        _region_fault(rd, pos, index, flags, size, kids)
    r = _new(Region)
    r.index = index
    r.flags = flags
    r.offset = offset
    r.size = size
    r.addr = addr
    r.children = kids
    return r


def _region_fault(rd: _Reader, pos: int, index: int, flags: int, size: int, kids: list) -> None:
    """Raise for the first fault among a region's sub-records (nothing when their
    data are only out of order)."""
    where = []
    cpos = pos + _S_REGION.size
    for _ in kids:
        where.append(cpos)
        cpos = (cpos + _S_HDR_UNPACK(rd.buf, cpos)[1] + ALIGN - 1) & -ALIGN
    seen = set()
    spans = []
    for kid, cpos in zip(kids, where):
        kt = kid.type
        if kt in _ONCE_PER_PARENT:
            if kt in seen:
                raise rd.err(cpos, kt, f"a second {type_name(kt)} in region {index}")
            seen.add(kt)
            if kt == REGION_INFO and (kid.vfio_flags ^ flags) & _REGION_VFIO_BITS:
                raise rd.err(cpos, kt, f"vfio_flags {kid.vfio_flags:#x} disagree with region {index}'s "
                             f"flags {flags:#x} on READ/WRITE/MMAP")
        elif kt == REGION_DATA:
            if kid.offset + len(kid.data) > size:
                raise rd.err(cpos, kt, f"data [{kid.offset:#x}, +{len(kid.data):#x}) outside region "
                             f"{index} ({size:#x} bytes)")
            spans.append((kid.offset, kid.offset + len(kid.data), cpos))
    if len(spans) > 1:
        spans.sort()
        for (a0, a1, _), (b0, _b1, boff) in zip(spans, spans[1:]):
            if b0 < a1:
                raise rd.err(boff, REGION_DATA, f"data at {b0:#x} overlaps data [{a0:#x}, {a1:#x}) "
                             f"in region {index}")


def _enc_region(r: Region) -> bytes:
    enc = _ENCODERS.get
    body = _join([enc(type(c), _encode_other)(c) for c in r.children])
    return _S_REGION.pack(REGION, _S_REGION.size + len(body), r.flags, r.index, r.offset, r.size, r.addr) + body


def _string(rd: _Reader, pos: int, rtype: int, a: int, b: int) -> str:
    """:meth:`_Reader.string`, done in one decode for a well-formed string: the
    last byte NUL, no other NUL, UTF-8.  Anything else goes to the method,
    which finds the first fault and words it."""
    buf = rd.buf
    if a < b and buf[b - 1] == 0:
        try:
            text = buf[a:b - 1].decode()        # UTF-8, strict; a slice of buf is bytes (see _Reader)
        except UnicodeDecodeError:
            pass
        else:
            if "\x00" not in text:
                return text
    return rd.string(pos, rtype, a, b)


def _dec_dtpath(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> DtPath:
    r = _new(DtPath)
    r.path = _string(rd, pos, DTPATH, pos + RECORD_HEADER_LEN, pos + rec_len)
    r.flags = flags
    return r


def _enc_dtpath(r: DtPath) -> bytes:
    s = _cstring(r.path)
    return _hdr(DTPATH, RECORD_HEADER_LEN + len(s), r.flags) + s


def _dec_dtindex(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> DtIndex:
    r = _new(DtIndex)
    r.prop_type, r.prop_index = _U_DTINDEX(rd.buf, pos + RECORD_HEADER_LEN)
    r.flags = flags
    return r


def _enc_dtindex(r: DtIndex) -> bytes:
    return _S_DTINDEX.pack(DTINDEX, _S_DTINDEX.size, r.flags, r.prop_type, r.prop_index)


def _dec_interrupt(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Interrupt:
    index, count, reserved = _U_INTERRUPT(rd.buf, pos + RECORD_HEADER_LEN)
    if reserved:
        rd.reserved(pos + 20, INTERRUPT, reserved)
    if index in rd.irq_indexes:
        raise rd.err(pos, INTERRUPT, f"duplicate interrupt index {index}")
    rd.irq_indexes.add(index)
    r = _new(Interrupt)
    r.index = index
    r.flags = flags
    r.count = count
    r.children = rd.sequence(pos + _INTERRUPT_SIZE, pos + rec_len, INTERRUPT, depth + 1) \
        if rec_len > _INTERRUPT_SIZE else []
    return r


def _enc_interrupt(r: Interrupt) -> bytes:
    enc = _ENCODERS.get
    body = _join([enc(type(c), _encode_other)(c) for c in r.children])
    return _S_INTERRUPT.pack(INTERRUPT, _S_INTERRUPT.size + len(body), r.flags, r.index, r.count, 0) + body


def _dec_config(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> PciConfigSpace:
    r = _new(PciConfigSpace)
    r.flags = flags
    return r


def _enc_config(r: PciConfigSpace) -> bytes:
    return _hdr(PCI_CONFIG_SPACE, RECORD_HEADER_LEN, r.flags)


def _dec_bar(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> PciBarInfo:
    r = _new(PciBarInfo)
    r.bar_type, r.bar_index = _U_BAR(rd.buf, pos + RECORD_HEADER_LEN)
    r.flags = flags
    return r


def _enc_bar(r: PciBarInfo) -> bytes:
    return _S_BAR.pack(PCI_BAR_INFO, _S_BAR.size, r.flags, r.bar_type, r.bar_index)


def _dec_pci(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> PciInfo:
    _, _, _, domain, bus, dev, fn, reserved = _S_PCI.unpack_from(rd.buf, pos)
    rd.reserved(pos + 19, PCI_INFO, reserved)
    if dev > 31 or fn > 7:
        raise rd.err(pos + 17, PCI_INFO, f"device {dev} / function {fn} out of range (0-31 / 0-7)")
    return PciInfo(domain, bus, dev, fn, flags)


def _enc_pci(r: PciInfo) -> bytes:
    return _S_PCI.pack(PCI_INFO, _S_PCI.size, r.flags, r.domain, r.bus, r.device, r.function, 0)


def _dec_devinfo(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> DeviceInfo:
    _, _, _, vflags, nreg, nirq = _S_DEVINFO.unpack_from(rd.buf, pos)
    return DeviceInfo(vflags, nreg, nirq, bytes(rd.buf[pos + _S_DEVINFO.size:pos + rec_len]), flags)


def _enc_devinfo(r: DeviceInfo) -> bytes:
    return _S_DEVINFO.pack(DEVICE_INFO, _S_DEVINFO.size + len(r.caps), r.flags, r.vfio_flags,
                           r.num_regions, r.num_irqs) + bytes(r.caps)


def _dec_reginfo(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> RegionInfo:
    buf = rd.buf
    r = _new(RegionInfo)
    r.vfio_flags, = _U_REGINFO(buf, pos + RECORD_HEADER_LEN)
    r.caps = buf[pos + _REGINFO_SIZE:pos + rec_len]            # bytes (see _Reader)
    r.flags = flags
    return r


def _enc_reginfo(r: RegionInfo) -> bytes:
    return _S_REGINFO.pack(REGION_INFO, _S_REGINFO.size + len(r.caps), r.flags, r.vfio_flags) + bytes(r.caps)


def _dec_data(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> RegionData:
    reserved, offset = _U_DATA(rd.buf, pos + RECORD_HEADER_LEN)
    if reserved:
        rd.reserved(pos + 12, REGION_DATA, reserved)
    r = _new(RegionData)
    r.offset = offset
    r.data = rd.payload(pos + _DATA_SIZE, pos + rec_len, copy=False) if rd.lazy else \
        rd.buf[pos + _DATA_SIZE:pos + rec_len]                    # bytes (see _Reader)
    r.flags = flags
    return r


def _enc_data(r: RegionData) -> bytes:
    return _S_DATA.pack(REGION_DATA, _S_DATA.size + len(r.data), r.flags, 0, r.offset) + bytes(r.data)


def _dec_note(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Note:
    r = _new(Note)
    r.text = _string(rd, pos, NOTE, pos + RECORD_HEADER_LEN, pos + rec_len)
    r.flags = flags
    return r


def _enc_note(r: Note) -> bytes:
    s = _cstring(r.text)
    return _hdr(NOTE, RECORD_HEADER_LEN + len(s), r.flags) + s


def _dec_cassette(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Cassette:
    return Cassette(_string(rd, pos, CASSETTE, pos + RECORD_HEADER_LEN, pos + rec_len), flags)


def _enc_cassette(r: Cassette) -> bytes:
    s = _cstring(r.text)
    return _hdr(CASSETTE, RECORD_HEADER_LEN + len(s), r.flags) + s


_ENTRY_ITER = _S_ENTRY.iter_unpack


def _dec_accesses(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Accesses:
    reserved = _S_ACCESSES.unpack_from(rd.buf, pos)[3]
    rd.reserved(pos + 12, ACCESSES, reserved)
    a, b = pos + _S_ACCESSES.size, pos + rec_len
    if (b - a) % ACCESS_ENTRY_LEN:
        raise rd.err(pos, ACCESSES, f"rec_len {rec_len}: the entries ({b - a} bytes) are not a whole number "
                     f"of {ACCESS_ENTRY_LEN}-byte entries")
    entries = []
    append = entries.append
    at = a
    for op, width, reserved, index, offset, value in _ENTRY_ITER(bytes(rd.buf[a:b])):
        if op > ACCESS_WRITE:
            raise rd.err(at, ACCESSES, f"access entry op {op} (0 read, 1 write)")
        if width not in ACCESS_WIDTHS:
            raise rd.err(at + 1, ACCESSES, f"access entry width {width} (1, 2, 4 or 8)")
        if reserved:
            rd.reserved(at + 2, ACCESSES, reserved)
        if value >> (8 * width):
            raise rd.err(at + 16, ACCESSES, f"access entry value {value:#x} wider than {width} bytes")
        append(Access(op, width, index, offset, value))
        at += ACCESS_ENTRY_LEN
    return Accesses(entries, flags)


def _enc_accesses(r: Accesses) -> bytes:
    pack = _S_ENTRY.pack
    body = b"".join(pack(e[0], e[1], 0, e[2], e[3], e[4]) for e in r.entries)
    return _S_ACCESSES.pack(ACCESSES, _S_ACCESSES.size + len(body), r.flags, 0) + body


def _dec_accdata(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> AccessData:
    _, _, _, index, offset = _S_ACCDATA.unpack_from(rd.buf, pos)
    if rec_len == _S_ACCDATA.size:
        raise rd.err(pos, ACCESS_DATA, "an access of 0 bytes")
    return AccessData(index, offset, bytes(rd.buf[pos + _S_ACCDATA.size:pos + rec_len]), flags)


def _enc_accdata(r: AccessData) -> bytes:
    return _S_ACCDATA.pack(ACCESS_DATA, _S_ACCDATA.size + len(r.data), r.flags, r.index, r.offset) + bytes(r.data)


def _dec_irqset(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> IrqSet:
    _, _, _, index, at, start, count, irq_flags, reserved = _S_IRQSET.unpack_from(rd.buf, pos)
    rd.reserved(pos + 36, IRQ_SET, reserved)
    return IrqSet(index, at, start, count, irq_flags, bytes(rd.buf[pos + _S_IRQSET.size:pos + rec_len]), flags)


def _enc_irqset(r: IrqSet) -> bytes:
    return _S_IRQSET.pack(IRQ_SET, _S_IRQSET.size + len(r.data), r.flags, r.index, r.at, r.start, r.count,
                          r.irq_flags, 0) + bytes(r.data)


def _dec_irqev(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> IrqEvent:
    _, _, _, index, at, vector, reserved = _S_IRQEV.unpack_from(rd.buf, pos)
    rd.reserved(pos + 28, IRQ_EVENT, reserved)
    return IrqEvent(index, at, vector, flags)


def _enc_irqev(r: IrqEvent) -> bytes:
    return _S_IRQEV.pack(IRQ_EVENT, _S_IRQEV.size, r.flags, r.index, r.at, r.vector, 0)


def _dec_reset(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> ResetEvent:
    _, _, _, kind, at = _S_RESET.unpack_from(rd.buf, pos)
    return ResetEvent(kind, at, flags)


def _enc_reset(r: ResetEvent) -> bytes:
    return _S_RESET.pack(RESET_EVENT, _S_RESET.size, r.flags, r.kind, r.at)


def _dma_map_codec(rtype: int, cls):
    def dec(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int):
        _, _, _, reserved, at, iova, size = _S_DMAMAP.unpack_from(rd.buf, pos)
        rd.reserved(pos + 12, rtype, reserved)
        if iova + size > 1 << 64:
            raise rd.err(pos + 24, rtype, f"IOVA {iova:#x} + size {size:#x} runs past 2^64")
        return cls(at, iova, size, flags)

    def enc(r) -> bytes:
        return _S_DMAMAP.pack(rtype, _S_DMAMAP.size, r.flags, 0, r.at, r.iova, r.size)
    return dec, enc


_dec_dmamap, _enc_dmamap = _dma_map_codec(DMA_MAP, DmaMap)
_dec_dmaunmap, _enc_dmaunmap = _dma_map_codec(DMA_UNMAP, DmaUnmap)


def _dec_dmawrite(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> DmaWrite:
    _, _, _, reserved, at, iova = _S_DMAWR.unpack_from(rd.buf, pos)
    rd.reserved(pos + 12, DMA_WRITE, reserved)
    n = rec_len - _S_DMAWR.size
    if n == 0:
        raise rd.err(pos, DMA_WRITE, "a DMA write of 0 bytes")
    if iova + n > 1 << 64:
        raise rd.err(pos + 24, DMA_WRITE, f"IOVA {iova:#x} + {n} bytes runs past 2^64")
    return DmaWrite(at, iova, bytes(rd.buf[pos + _S_DMAWR.size:pos + rec_len]), flags)


def _enc_dmawrite(r: DmaWrite) -> bytes:
    return _S_DMAWR.pack(DMA_WRITE, _S_DMAWR.size + len(r.data), r.flags, 0, r.at, r.iova) + bytes(r.data)


def _dec_marker(rd: _Reader, pos: int, rec_len: int, flags: int, depth: int) -> Marker:
    _, _, _, reserved, at = _S_MARKER.unpack_from(rd.buf, pos)
    rd.reserved(pos + 12, MARKER, reserved)
    return Marker(at, _string(rd, pos, MARKER, pos + _S_MARKER.size, pos + rec_len), flags)


def _enc_marker(r: Marker) -> bytes:
    s = _cstring(r.text)
    return _S_MARKER.pack(MARKER, _S_MARKER.size + len(s), r.flags, 0, r.at) + s


_T, _R, _I = (_TOP,), (REGION,), (REGION, INTERRUPT)
#: The record table (FORMAT.md's record types, in its order): adding a type is
#: a row here, its model class, its layout and its two functions.
RECORD_TYPES = (
    RecordType(REGION, "REGION", Region, _L_Region, _Tail.SUBRECORDS, _T, _dec_region, _enc_region),
    RecordType(DTPATH, "DTPATH", DtPath, _L_RecordHeader, _Tail.STRING, _I, _dec_dtpath, _enc_dtpath),
    RecordType(DTINDEX, "DTINDEX", DtIndex, _L_DtIndex, _Tail.NONE, _I, _dec_dtindex, _enc_dtindex),
    RecordType(INTERRUPT, "INTERRUPT", Interrupt, _L_Interrupt, _Tail.SUBRECORDS, _T,
               _dec_interrupt, _enc_interrupt),
    RecordType(PCI_CONFIG_SPACE, "PCI_CONFIG_SPACE", PciConfigSpace, _L_RecordHeader, _Tail.NONE, _R,
               _dec_config, _enc_config, _Once.PER_PARENT),
    RecordType(PCI_BAR_INFO, "PCI_BAR_INFO", PciBarInfo, _L_PciBarInfo, _Tail.NONE, _R, _dec_bar, _enc_bar,
               _Once.PER_PARENT),
    RecordType(PCI_INFO, "PCI_INFO", PciInfo, _L_PciInfo, _Tail.NONE, _T, _dec_pci, _enc_pci, _Once.PER_FILE),
    RecordType(DEVICE_INFO, "DEVICE_INFO", DeviceInfo, _L_DeviceInfo, _Tail.BYTES, _T, _dec_devinfo, _enc_devinfo,
               _Once.PER_FILE),
    RecordType(REGION_INFO, "REGION_INFO", RegionInfo, _L_RegionInfo, _Tail.BYTES, _R, _dec_reginfo, _enc_reginfo,
               _Once.PER_PARENT),
    RecordType(REGION_DATA, "REGION_DATA", RegionData, _L_RegionData, _Tail.BYTES, _R, _dec_data, _enc_data),
    RecordType(NOTE, "NOTE", Note, _L_RecordHeader, _Tail.STRING, _T, _dec_note, _enc_note),
    # cassettes (1.1)
    RecordType(CASSETTE, "CASSETTE", Cassette, _L_RecordHeader, _Tail.STRING, _T, _dec_cassette, _enc_cassette,
               _Once.PER_FILE),
    RecordType(ACCESSES, "ACCESSES", Accesses, _L_Accesses, _Tail.BYTES, _T, _dec_accesses, _enc_accesses),
    RecordType(ACCESS_DATA, "ACCESS_DATA", AccessData, _L_AccessData, _Tail.BYTES, _T, _dec_accdata, _enc_accdata),
    RecordType(IRQ_SET, "IRQ_SET", IrqSet, _L_IrqSet, _Tail.BYTES, _T, _dec_irqset, _enc_irqset),
    RecordType(IRQ_EVENT, "IRQ_EVENT", IrqEvent, _L_IrqEvent, _Tail.NONE, _T, _dec_irqev, _enc_irqev),
    RecordType(RESET_EVENT, "RESET_EVENT", ResetEvent, _L_ResetEvent, _Tail.NONE, _T, _dec_reset, _enc_reset),
    RecordType(DMA_MAP, "DMA_MAP", DmaMap, _L_DmaMap, _Tail.NONE, _T, _dec_dmamap, _enc_dmamap),
    RecordType(DMA_UNMAP, "DMA_UNMAP", DmaUnmap, _L_DmaMap, _Tail.NONE, _T, _dec_dmaunmap, _enc_dmaunmap),
    RecordType(DMA_WRITE, "DMA_WRITE", DmaWrite, _L_DmaWrite, _Tail.BYTES, _T, _dec_dmawrite, _enc_dmawrite),
    RecordType(MARKER, "MARKER", Marker, _L_Marker, _Tail.STRING, _T, _dec_marker, _enc_marker),
)
del _T, _R, _I
_BY_TYPE = {row.rtype: row for row in RECORD_TYPES}
_ENCODERS = {row.cls: row.encode for row in RECORD_TYPES}
_ONCE_PER_PARENT = frozenset(row.rtype for row in RECORD_TYPES if row.once is _Once.PER_PARENT)
#: parent type -> {record type allowed under it: (size, max_len, decode, nests)}: what _Reader.sequence
#: checks per record without going through _Reader.record (derived from the table; the types
#: allowed once per file are left to _Reader.record, which keeps count of them)
_ALLOWED = {parent: {row.rtype: (row.size, row.max_len, row.decode, row.nests)
                     for row in RECORD_TYPES if parent in row.places and not row.once_per_file}
            for parent in {p for row in RECORD_TYPES for p in row.places}}
_S_HDR_UNPACK = _S_HDR.unpack_from
#: _ALLOWED[REGION] for _dec_region's walk: (size, max_len, decode, a bit of its own for
#: a once-per-parent type, else 0)
_REGION_KIDS = {rtype: (size, max_len, decode, 1 << i if rtype in _ONCE_PER_PARENT else 0)
                for i, (rtype, (size, max_len, decode, _)) in enumerate(_ALLOWED[REGION].items())}
_NO_KID = (1, 0, None, 0)                   # no rec_len fits: the walk stops
_BAR_SIZE = _S_BAR.size
_BAR_BIT, _REGINFO_BIT = _REGION_KIDS[PCI_BAR_INFO][3], _REGION_KIDS[REGION_INFO][3]
TYPE_NAMES = {row.rtype: row.name for row in RECORD_TYPES}


def parse(buf, *, path: str | None = None, lazy: bool = False, max_size: int = DEFAULT_MAX_FILE_SIZE,
          max_records: int = DEFAULT_MAX_RECORDS, _views: list | None = None) -> DeviceRecord:
    """Decode a record file held in ``buf`` (bytes, bytearray, memoryview or mmap).

    Raises :class:`RecordFormatError` (naming ``path``, the byte offset and the
    record type) for anything ``FORMAT.md`` says a reader refuses, including
    more than ``max_size`` bytes or ``max_records`` records.  Nothing else: the
    work and memory are linear in the size of ``buf``.  With ``lazy=True``
    region data are memoryviews into ``buf`` instead of copies (see
    :class:`MappedRecord`).
    """
    n = len(buf)
    if n > max_size:
        raise RecordFormatError(0, None, f"file is {n} bytes, larger than the limit of {max_size}", path)
    if n < FILE_HEADER_LEN:
        raise RecordFormatError(0, None, f"truncated file header: {n} of {FILE_HEADER_LEN} bytes", path)
    magic, major, minor, hflags, header_len, reserved, file_len = _S_FILE.unpack_from(buf, 0)
    if magic != MAGIC:
        raise RecordFormatError(0, None, f"bad magic {magic!r} (not a VFIO record file)", path)
    if major != VERSION_MAJOR:
        raise RecordFormatError(8, None, f"format version {major}.{minor}; this reader knows {VERSION_MAJOR}.x", path)
    if reserved:
        raise RecordFormatError(20, None, f"reserved field is {reserved:#x}, must be 0", path)
    if header_len < FILE_HEADER_LEN or header_len % ALIGN:
        raise RecordFormatError(16, None, f"header_len {header_len} misaligned or below {FILE_HEADER_LEN}", path)
    if file_len != n:
        what = "truncated" if file_len > n else "has trailing bytes"
        raise RecordFormatError(min(file_len, n), None, f"file {what}: header says {file_len} bytes, "
                                f"file has {n}", path)
    if header_len > n:
        raise RecordFormatError(16, None, f"header_len {header_len} past the end of the {n}-byte file", path)
    rd = _Reader(buf, path, lazy, max_records)
    offsets: list[int] = []
    try:
        records = rd.sequence(header_len, n, _TOP, 1, offsets)
    finally:
        if _views is not None:  # even on error: the caller must release them to unmap
            _views.extend(rd.views)
    return DeviceRecord(records, minor, hflags, bytes(buf[FILE_HEADER_LEN:header_len]), offsets, path)


# ---------------------------------------------------------------------------
# writing
# ---------------------------------------------------------------------------
def _encode_other(r) -> bytes:
    """A record without a row: an unknown one, written back as read."""
    if type(r) is UnknownRecord:
        return bytes(r.raw)
    raise TypeError(f"not a record: {r!r}")


def _encode(r) -> bytes:
    """A record's bytes, header included, padding excluded (through its row)."""
    return _ENCODERS.get(type(r), _encode_other)(r)


def write(rec: DeviceRecord, *, validate: bool = True) -> bytes:
    """Encode ``rec``.  With ``validate`` (the default) the result is parsed
    back, so a model that breaks the format (duplicate indexes, data outside a
    region, ...) is refused here rather than written."""
    if len(rec.header_extra) % ALIGN:
        raise ValueError(f"header_extra is {len(rec.header_extra)} bytes, not a multiple of {ALIGN}")
    try:
        body = bytearray()
        enc = _ENCODERS.get
        for r in rec.records:
            body += enc(type(r), _encode_other)(r)
            body += _ZEROS[:_align(len(body)) - len(body)]
        header_len = FILE_HEADER_LEN + len(rec.header_extra)
        head = _S_FILE.pack(MAGIC, VERSION_MAJOR, rec.version_minor, rec.header_flags, header_len, 0,
                            header_len + len(body))
    except struct.error as e:
        raise ValueError(f"a field does not fit its record layout: {e}") from None
    out = head + bytes(rec.header_extra) + bytes(body)
    if validate:
        try:
            parse(out, max_size=max(len(out), DEFAULT_MAX_FILE_SIZE))
        except RecordFormatError as e:
            raise ValueError(f"refusing to write an invalid record file: {e}") from None
    return out


# ---------------------------------------------------------------------------
# files
# ---------------------------------------------------------------------------
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
               (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def open_record_file(path, *, max_size: int = DEFAULT_MAX_FILE_SIZE):
    """Open a record file for reading, safely: the one way every reader opens one.

    Returns ``(file, size)``: a binary file object (the caller closes it) and
    the size ``fstat`` gave.  The open never blocks (``O_NONBLOCK``, so a FIFO
    with no writer does not hang; blocking mode is restored for a regular
    file) and does not make a terminal the controlling one.

    Raises :class:`RecordFormatError` (``offset`` None, naming the path) when
    ``path`` is not a regular file (a FIFO, a directory, a device, a socket)
    or is larger than ``max_size`` bytes; ``OSError`` (``FileNotFoundError``,
    ``PermissionError``, ...; ``filename`` is the path) when it cannot be opened.
    """
    path = os.fspath(path)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "not a regular file")
            raise RecordFormatError(None, None, f"is {kind}, not a regular file: a record file must be one "
                                    f"(nothing was read)", path)
        if st.st_size > max_size:
            raise RecordFormatError(None, None, f"file is {st.st_size} bytes, larger than the limit of "
                                    f"{max_size}", path)
        os.set_blocking(fd, True)
        f = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    return f, st.st_size


def load(path, *, max_size: int = DEFAULT_MAX_FILE_SIZE) -> DeviceRecord:
    """Read and parse a record file (opened with :func:`open_record_file`, so
    its kind and size are checked before anything is read).

    Raises :class:`RecordFormatError` (not a regular file, too large,
    malformed) or ``OSError`` (cannot be opened or read), both naming the path.
    """
    path = os.fspath(path)
    f, size = open_record_file(path, max_size=max_size)
    with f:
        data = f.read(size + 1)     # one byte more: a file that grew since fstat is refused by parse
    return parse(data, path=path, max_size=max_size)


def save(rec: DeviceRecord, path) -> None:
    """Write ``rec`` to ``path`` (through a temporary file, renamed into place)."""
    path = os.fspath(path)
    data = write(rec)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


class MappedRecord:
    """A record file mapped read-only and parsed lazily: region data stay in the
    page cache (memoryviews into the mapping) instead of being copied into
    Python.  ``close()`` releases the views and the mapping; region data of
    ``.record`` are unusable afterwards."""

    def __init__(self, path, *, max_size: int = DEFAULT_MAX_FILE_SIZE):
        """Raises what :func:`open_record_file` and :func:`parse` raise."""
        self.path = os.fspath(path)
        self._views: list[memoryview] = []
        self._map = None
        f, size = open_record_file(self.path, max_size=max_size)
        with f:
            if size == 0:
                raise RecordFormatError(0, None, "truncated file header: empty file", self.path)
            self._map = mmap.mmap(f.fileno(), size, prot=mmap.PROT_READ)
        try:
            self.record = parse(self._map, path=self.path, lazy=True, max_size=max_size, _views=self._views)
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for v in self._views:
            v.release()
        self._views = []
        if self._map is not None:
            self._map.close()
            self._map = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
