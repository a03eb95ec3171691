"""VFIO devices, their regions and their interrupts.

A VFIO device fd exposes a device as *regions* (for vfio-pci: six BARs, the
expansion ROM, config space, VGA, plus device-specific ones) and *IRQ indexes*
(INTx, MSI, MSI-X, ERR, REQ).  ``VFIO_DEVICE_GET_REGION_INFO`` says where each
region sits in the fd's offset space, its size, whether it can be read,
written and mmap'ed, and -- through a capability chain -- which parts may be
mmap'ed (sparse mmap), what type it is, and whether the MSI-X table may be
mapped.  Regions are accessed with ``pread``/``pwrite`` at that offset or
through ``mmap``.  Interrupts are wired to eventfds with
``VFIO_DEVICE_SET_IRQS``.

Everything here is written against :class:`vfio.backend.DeviceBackend`, so the
same code drives a real device (:class:`KernelBackend`) and a replayed one
(:mod:`vfio.record.replay`).
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from dataclasses import dataclass, field
from enum import Enum
from typing import Sequence

from . import uapi
from .backend import DeviceBackend
from .errors import InvalidValue, RegionAccessError, VfioError, wrap_oserror
from .irq import EventFd, close_eventfds
from . import memory
from ._resource import OwnedFd, Resource

PAGE_SIZE = memory.PAGE_SIZE

# ---------------------------------------------------------------------------------------
# Kernel backend
# ---------------------------------------------------------------------------------------


class KernelBackend(OwnedFd, DeviceBackend):
    """A real VFIO device fd (from a group or a cdev).  Owns the fd (closing it
    is what makes vfio-pci reset and release the device)."""

    def __init__(self, fd: int, name: str):
        self.fd = fd
        self.name = name

    def _info(self, request: int, buf: bytearray, what: str) -> bytes:
        uapi.ioctl(self._fd(what), request, buf, what)
        return bytes(buf)

    def _fd(self, what: str) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, f"{what}: device {self.name} is closed")
        return self.fd

    def get_info(self, argsz: int) -> bytes:
        return self._info(uapi.VFIO_DEVICE_GET_INFO, uapi.info_buffer(uapi.vfio_device_info, argsz),
                          f"VFIO_DEVICE_GET_INFO on {self.name}")

    def get_region_info(self, index: int, argsz: int) -> bytes:
        return self._info(uapi.VFIO_DEVICE_GET_REGION_INFO,
                          uapi.info_buffer(uapi.vfio_region_info, argsz, index=index),
                          f"VFIO_DEVICE_GET_REGION_INFO index {index} on {self.name}")

    def get_irq_info(self, index: int) -> bytes:
        st = uapi.vfio_irq_info(argsz=ctypes.sizeof(uapi.vfio_irq_info), index=index)
        uapi.ioctl(self._fd("GET_IRQ_INFO"), uapi.VFIO_DEVICE_GET_IRQ_INFO, st,
                   f"VFIO_DEVICE_GET_IRQ_INFO index {index} on {self.name}")
        return bytes(st)

    def set_irqs(self, irq_set: bytes) -> None:
        hdr = uapi.vfio_irq_set.from_buffer_copy(irq_set)
        uapi.ioctl(self._fd("SET_IRQS"), uapi.VFIO_DEVICE_SET_IRQS, bytearray(irq_set),
                   f"VFIO_DEVICE_SET_IRQS index {hdr.index} start {hdr.start} count {hdr.count} "
                   f"flags {hdr.flags:#x} on {self.name}")

    def reset(self) -> None:
        uapi.ioctl(self._fd("RESET"), uapi.VFIO_DEVICE_RESET, 0, f"VFIO_DEVICE_RESET on {self.name}")

    def get_pci_hot_reset_info(self, argsz: int) -> bytes:
        return self._info(uapi.VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
                          uapi.info_buffer(uapi.vfio_pci_hot_reset_info, argsz),
                          f"VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on {self.name}")

    def pci_hot_reset(self, hot_reset: bytes) -> None:
        uapi.ioctl(self._fd("HOT_RESET"), uapi.VFIO_DEVICE_PCI_HOT_RESET, bytearray(hot_reset),
                   f"VFIO_DEVICE_PCI_HOT_RESET on {self.name}")

    def feature(self, buf: bytes) -> bytes:
        b = bytearray(buf)
        hdr = uapi.vfio_device_feature.from_buffer_copy(b)
        uapi.ioctl(self._fd("FEATURE"), uapi.VFIO_DEVICE_FEATURE, b,
                   f"VFIO_DEVICE_FEATURE {hdr.flags & uapi.VFIO_DEVICE_FEATURE_MASK} "
                   f"flags {hdr.flags:#x} on {self.name}")
        return bytes(b)

    def pread(self, offset: int, length: int) -> bytes:
        try:
            data = os.pread(self._fd("pread"), length, offset)
        except OSError as e:
            raise wrap_oserror(e, f"pread {length} bytes at {offset:#x} on {self.name}") from None
        if len(data) != length:
            raise VfioError(errno.EIO, f"pread {length} bytes at {offset:#x} on {self.name}: got {len(data)}")
        return data

    def pwrite(self, offset: int, data: bytes) -> int:
        try:
            n = os.pwrite(self._fd("pwrite"), data, offset)
        except OSError as e:
            raise wrap_oserror(e, f"pwrite {len(data)} bytes at {offset:#x} on {self.name}") from None
        if n != len(data):
            raise VfioError(errno.EIO, f"pwrite {len(data)} bytes at {offset:#x} on {self.name}: wrote {n}")
        return n

    def mmap(self, offset: int, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> mmap.mmap:
        return memory.map_fd(self._fd("mmap"), length, offset, prot,
                             f"mmap {length:#x} bytes at {offset:#x} on {self.name}")

    def fileno(self) -> int:
        return self.fd


# ---------------------------------------------------------------------------------------
# Decoded info
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SparseMmapCap:
    """VFIO_REGION_INFO_CAP_SPARSE_MMAP: only these (offset, size) areas may be mmap'ed."""
    areas: tuple
    id: int = uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP
    version: int = 1


@dataclass(frozen=True)
class RegionTypeCap:
    """VFIO_REGION_INFO_CAP_TYPE: a device-specific region's (type, subtype)."""
    type: int
    subtype: int
    id: int = uapi.VFIO_REGION_INFO_CAP_TYPE
    version: int = 1


@dataclass(frozen=True)
class MsixMappableCap:
    """VFIO_REGION_INFO_CAP_MSIX_MAPPABLE: the MSI-X table/PBA inside this BAR may be mmap'ed."""
    id: int = uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE
    version: int = 1


@dataclass(frozen=True)
class UnknownCap:
    """A capability this toolkit does not decode, kept as its number and raw bytes."""
    id: int
    version: int
    data: bytes


@dataclass(frozen=True)
class RegionInfo:
    index: int
    flags: int
    size: int
    offset: int
    caps: tuple = ()
    raw: bytes = b""

    @property
    def readable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_READ)

    @property
    def writable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_WRITE)

    @property
    def mmappable(self) -> bool:
        return bool(self.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP)

    def cap(self, cap_type):
        for c in self.caps:
            if isinstance(c, cap_type):
                return c
        return None

    @property
    def msix_mappable(self) -> bool:
        return self.cap(MsixMappableCap) is not None

    def mmap_areas(self) -> list:
        """The (offset, size) parts of the region that may be mmap'ed."""
        if not self.mmappable or not self.size:
            return []
        sparse = self.cap(SparseMmapCap)
        if sparse is not None:
            return [a for a in sparse.areas if a[1]]
        return [(0, self.size)]


def parse_region_info(buf: bytes, what: str) -> RegionInfo:
    """Decode a GET_REGION_INFO buffer (header + capability chain)."""
    hdr = uapi.vfio_region_info.from_buffer_copy(buf)
    caps = []
    if hdr.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS and hdr.cap_offset:
        for rc in uapi.iter_caps(buf, hdr.cap_offset, what, ctypes.sizeof(uapi.vfio_region_info)):
            caps.append(_decode_region_cap(rc, what))
    return RegionInfo(hdr.index, hdr.flags, hdr.size, hdr.offset, tuple(caps), bytes(buf))


def _decode_region_cap(rc: uapi.RawCap, what: str):
    if rc.id == uapi.VFIO_REGION_INFO_CAP_SPARSE_MMAP:
        uapi.check_cap_size(rc, uapi.vfio_region_info_cap_sparse_mmap, what)
        sp = uapi.vfio_region_info_cap_sparse_mmap.from_buffer_copy(rc.data)
        base = ctypes.sizeof(uapi.vfio_region_info_cap_sparse_mmap)
        asz = ctypes.sizeof(uapi.vfio_region_sparse_mmap_area)
        if base + sp.nr_areas * asz > len(rc.data):
            raise InvalidValue(f"{what}: sparse mmap capability at {rc.offset:#x} claims {sp.nr_areas} "
                                 f"areas but has room for {(len(rc.data) - base) // asz}")
        areas = tuple(struct.unpack_from("<QQ", rc.data, base + i * asz) for i in range(sp.nr_areas))
        return SparseMmapCap(areas, version=rc.version)
    if rc.id == uapi.VFIO_REGION_INFO_CAP_TYPE:
        uapi.check_cap_size(rc, uapi.vfio_region_info_cap_type, what)
        t = uapi.vfio_region_info_cap_type.from_buffer_copy(rc.data)
        return RegionTypeCap(t.type, t.subtype, version=rc.version)
    if rc.id == uapi.VFIO_REGION_INFO_CAP_MSIX_MAPPABLE:
        return MsixMappableCap(version=rc.version)
    return UnknownCap(rc.id, rc.version, rc.data)


@dataclass(frozen=True)
class DeviceInfo:
    flags: int
    num_regions: int
    num_irqs: int
    caps: tuple = ()

    @property
    def is_pci(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_PCI)

    @property
    def is_platform(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_PLATFORM)

    @property
    def can_reset(self) -> bool:
        return bool(self.flags & uapi.VFIO_DEVICE_FLAGS_RESET)


@dataclass(frozen=True)
class IrqInfo:
    index: int
    flags: int
    count: int

    @property
    def eventfd(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_EVENTFD)

    @property
    def maskable(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_MASKABLE)

    @property
    def automasked(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_AUTOMASKED)

    @property
    def noresize(self) -> bool:
        return bool(self.flags & uapi.VFIO_IRQ_INFO_NORESIZE)


@dataclass(frozen=True)
class HotResetDevice:
    group_id: int   # or devid, when flags has VFIO_PCI_HOT_RESET_FLAG_DEV_ID
    segment: int
    bus: int
    devfn: int

    @property
    def bdf(self) -> str:
        return f"{self.segment:04x}:{self.bus:02x}:{self.devfn >> 3:02x}.{self.devfn & 7}"


@dataclass(frozen=True)
class HotResetInfo:
    flags: int
    devices: tuple = field(default_factory=tuple)


# ---------------------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------------------

_WIDTH_FMT = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}


class Region(Resource):
    """One region of a device, accessed with pread/pwrite (always possible when the
    region is readable/writable), with typed little-endian accessors.

    ``map()`` gives the mmap'ed view (:class:`MappedRegion`) for fast MMIO;
    ``close()`` (or leaving a ``with`` block) unmaps every view made from it.
    A value that does not fit an accessor's width raises :class:`InvalidValue`.
    """

    def __init__(self, device: "Device", info: RegionInfo):
        self.device = device
        self.info = info
        self.index = info.index
        self.size = info.size
        self._maps: list[MappedRegion] = []

    def __repr__(self) -> str:
        return f"Region({self.device.name} index {self.index}, size {self.size:#x}, flags {self.info.flags:#x})"

    @property
    def _what(self) -> str:
        return f"region {self.index} of {self.device.name}"

    def _check(self, offset: int, length: int, write: bool) -> None:
        if self.device.closed:
            raise RegionAccessError(f"{self._what}: the device is closed")
        memory.check_span(offset, length, self.size, self._what)
        need, word = (self.info.writable, "writable") if write else (self.info.readable, "readable")
        if not need:
            raise RegionAccessError(f"{self._what} is not {word}")

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length, False)
        return self.device._be.pread(self.info.offset + offset, length)

    def write(self, offset: int, data: bytes) -> int:
        self._check(offset, len(data), True)
        return self.device._be.pwrite(self.info.offset + offset, bytes(data))

    def _readw(self, offset: int, w: int) -> int:
        return struct.unpack(_WIDTH_FMT[w], self.read(offset, w))[0]

    def _writew(self, offset: int, w: int, value: int) -> None:
        self.write(offset, struct.pack(_WIDTH_FMT[w], memory.check_value(value, w, offset, self._what)))

    def read8(self, offset: int) -> int:
        return self._readw(offset, 1)

    def read16(self, offset: int) -> int:
        return self._readw(offset, 2)

    def read32(self, offset: int) -> int:
        return self._readw(offset, 4)

    def read64(self, offset: int) -> int:
        return self._readw(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        self._writew(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        self._writew(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        self._writew(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        self._writew(offset, 8, value)

    def map(self, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> "MappedRegion":
        """mmap every mmap-able area of the region (sparse-mmap aware); accesses outside
        them fall back to pread/pwrite.  ``prot`` PROT_READ alone maps it read-only.

        Raises :class:`RegionAccessError` if nothing of the region may be mapped,
        :class:`VfioError` (errno kept, region and area named) if the kernel refuses
        the mmap.
        """
        m = (TrappedMappedRegion if self.device.backend.traps_mmio else MappedRegion)(self, prot)
        self._maps.append(m)
        return m

    def close(self) -> None:
        while self._maps:
            self._maps.pop().close()


class MappedRegion(Resource):
    """A region's mmap'ed view with typed accessors, like python-periphery's MMIO.

    Each accessor of width N (``read8`` .. ``write64``) is exactly one N-byte load
    or store at that offset (an item of a native-format ``memoryview`` cast, see
    :mod:`vfio.memory`): devices such as QEMU's edu accept only 4- and 8-byte
    accesses.  Values are in the CPU's byte order (little-endian on x86 and
    arm64, as the device's registers).  Offsets are relative to the region; every
    access is checked: inside the region, naturally aligned, and for writes a
    value that fits the width (an over-wide or negative value raises
    :class:`InvalidValue` naming value, width and offset; nothing is truncated).
    Offsets not covered by a mapped area (a sparse hole, typically the MSI-X
    table) go through the region's pread/pwrite.

    Bulk :meth:`read`/:meth:`write` split the span as :func:`vfio.memory.runs`
    does: naturally aligned accesses in ascending offset order, the widest of
    8, 4, 2, 1 bytes that is aligned there and fits -- 1-, 2-, 4-byte pieces up to
    the first 8-aligned offset, 8-byte words, then 4-, 2-, 1-byte pieces for the
    tail (a 4 KiB block at an 8-aligned offset is 512 8-byte loads or stores).
    """

    __slots__ = ("region", "size", "_what", "_areas", "_v1", "_v2", "_v4", "_v8", "_k1", "_k2", "_k4", "_k8",
                 "_fast", "_fast_end")

    def __init__(self, region: Region, prot: int):
        self.region = region
        self.size = region.size
        self._what = region._what
        # (start, end, mmap, base address -- None if read-only; for code that hands the address on --, WordViews)
        self._areas = []
        self._set_fast(memory.WordViews())
        areas = region.info.mmap_areas()
        if not areas:
            raise RegionAccessError(f"{self._what} has no mmap-able area")
        try:
            for off, size in areas:
                if off % PAGE_SIZE or off + size > region.size:
                    raise RegionAccessError(f"{self._what}: mmap area {off:#x}+{size:#x} is unaligned "
                                            f"or outside the region")
                try:
                    mm = region.device.backend.mmap(region.info.offset + off, size, prot)
                except VfioError as e:
                    raise VfioError(e.errno, f"{self._what} area {off:#x}+{size:#x}: {e.what}") from None
                try:
                    views = memory.WordViews(mm, size)
                except BaseException:
                    memory.release(mm)
                    raise
                base = None if views.readonly else memory.base_address(mm)
                self._areas.append((off, off + size, mm, base, views))
        except BaseException:
            self.close()
            raise
        if self._areas[0][0] == 0:      # the accessors index the area at offset 0 directly
            self._set_fast(self._areas[0][4])

    def _set_fast(self, views: "memory.WordViews") -> None:
        """Point the accessors at ``views`` (the area at offset 0, or none).

        ``_kN`` is the fast path's one test: ``offset & _kN`` is non-zero for a negative
        offset, an offset past the power of two that covers the views, or one that is
        not N-aligned (two's complement: ``-p`` has every bit from ``log2(p)`` up set).
        """
        self._fast = views
        self._fast_end = views.length
        self._v1, self._v2, self._v4, self._v8 = views.v1, views.v2, views.v4, views.v8
        p = 1 << max(views.length - 1, 0).bit_length()      # the smallest power of two >= length
        self._k1, self._k2, self._k4, self._k8 = -p, -p | 1, -p | 3, -p | 7

    @property
    def areas(self) -> list:
        return [(s, e - s) for s, e, *_ in self._areas]

    # ---- the slow path: everything the fast path does not settle ---------------------------
    def _closed(self) -> bool:
        return not self._areas

    def _check(self, offset: int, w: int) -> None:
        if self._closed():
            raise RegionAccessError(f"{self._what}: mapping is closed")
        memory.check_access(offset, w, self.size, self._what)

    def _read_slow(self, offset: int, w: int) -> int:
        self._check(offset, w)
        for s, e, _mm, _base, views in self._areas:
            if s <= offset and offset + w <= e:
                return views.by_width[w][(offset - s) // w]
        return self.region._readw(offset, w)       # trapped: not in any mapped area

    def _write_slow(self, offset: int, w: int, value) -> None:
        self._check(offset, w)
        value = memory.check_value(value, w, offset, self._what)
        for s, e, _mm, _base, views in self._areas:
            if s <= offset and offset + w <= e:
                if views.readonly:
                    raise RegionAccessError(f"{self._what}: {w}-byte write at {offset:#x}: mapped read-only")
                views.by_width[w][(offset - s) // w] = value
                return
        self.region._writew(offset, w, value)

    # ---- the fast path ---------------------------------------------------------------------
    # Every driver's hot path: one int test (``_set_fast``) and one item access of a view
    # made once.  The view checks the upper bound (IndexError), the value's range and type
    # (ValueError, TypeError; it stores nothing then) and read-only-ness (TypeError);
    # anything it refuses goes to the slow path, which says why in the toolkit's terms
    # or serves the access from another area or pread/pwrite.
    def read8(self, offset: int) -> int:
        if offset & self._k1:
            return self._read_slow(offset, 1)
        try:
            return self._v1[offset]
        except (IndexError, ValueError):
            return self._read_slow(offset, 1)

    def read16(self, offset: int) -> int:
        if offset & self._k2:
            return self._read_slow(offset, 2)
        try:
            return self._v2[offset >> 1]
        except (IndexError, ValueError):
            return self._read_slow(offset, 2)

    def read32(self, offset: int) -> int:
        if offset & self._k4:
            return self._read_slow(offset, 4)
        try:
            return self._v4[offset >> 2]
        except (IndexError, ValueError):
            return self._read_slow(offset, 4)

    def read64(self, offset: int) -> int:
        if offset & self._k8:
            return self._read_slow(offset, 8)
        try:
            return self._v8[offset >> 3]
        except (IndexError, ValueError):
            return self._read_slow(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        if offset & self._k1:
            return self._write_slow(offset, 1, value)
        try:
            self._v1[offset] = value
        except (IndexError, ValueError, TypeError):
            self._write_slow(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        if offset & self._k2:
            return self._write_slow(offset, 2, value)
        try:
            self._v2[offset >> 1] = value
        except (IndexError, ValueError, TypeError):
            self._write_slow(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        if offset & self._k4:
            return self._write_slow(offset, 4, value)
        try:
            self._v4[offset >> 2] = value
        except (IndexError, ValueError, TypeError):
            self._write_slow(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        if offset & self._k8:
            return self._write_slow(offset, 8, value)
        try:
            self._v8[offset >> 3] = value
        except (IndexError, ValueError, TypeError):
            self._write_slow(offset, 8, value)

    # ---- bulk ------------------------------------------------------------------------------
    def _check_span(self, offset: int, length: int) -> None:
        if self._closed():
            raise RegionAccessError(f"{self._what}: mapping is closed")
        memory.check_span(offset, length, self.size, self._what)

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset``, read as naturally aligned accesses in ascending
        order (8-byte words between 1/2/4-byte head and tail pieces: class docstring)."""
        self._check_span(offset, length)
        if offset + length <= self._fast_end:
            return self._fast.read_block(offset, length)
        out = bytearray(length)
        for off, w in memory.pieces(offset, length):
            out[off - offset:off - offset + w] = self._piece(off, w)
        return bytes(out)

    def _piece(self, offset: int, w: int) -> bytes:
        for s, e, _mm, _base, views in self._areas:
            if s <= offset and offset + w <= e:
                return views.by_width[w][(offset - s) // w].to_bytes(w, memory.BYTE_ORDER)
        return self.region.read(offset, w)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` as naturally aligned accesses in ascending order
        (split as :meth:`read`)."""
        data = bytes(data)
        self._check_span(offset, len(data))
        if offset + len(data) <= self._fast_end and not self._fast.readonly:
            self._fast.write_block(offset, data)
            return
        for off, w in memory.pieces(offset, len(data)):
            self._write_piece(off, w, data[off - offset:off - offset + w])

    def _write_piece(self, offset: int, w: int, chunk: bytes) -> None:
        for s, e, _mm, _base, views in self._areas:
            if s <= offset and offset + w <= e:
                if views.readonly:
                    raise RegionAccessError(f"{self._what}: {w}-byte write at {offset:#x}: mapped read-only")
                views.by_width[w][(offset - s) // w] = int.from_bytes(chunk, memory.BYTE_ORDER)
                return
        self.region.write(offset, chunk)

    def close(self) -> None:
        areas, self._areas = self._areas, []
        self._set_fast(memory.WordViews())      # the accessors now miss, and find it closed
        for _, _, mm, _, views in areas:
            views.release()
            memory.release(mm)


class TrappedMappedRegion(MappedRegion):
    """The view :meth:`Region.map` gives on a backend that must see every access
    (``traps_mmio``: a cassette being recorded or replayed): nothing is mapped,
    each accessor is the region's pread/pwrite with the view's checks."""

    __slots__ = ("_open",)

    def __init__(self, region: Region, prot: int):
        self.region = region
        self.size = region.size
        self._what = region._what
        self._areas = []                        # nothing mapped: every access is trapped
        self._set_fast(memory.WordViews())
        if not region.info.mmap_areas():        # as the kernel would refuse the mmap
            raise RegionAccessError(f"{self._what} has no mmap-able area")
        self._open = True

    def _closed(self) -> bool:
        return not self._open

    def close(self) -> None:
        self._open = False
        super().close()

    def read8(self, offset: int) -> int:
        return self._read_slow(offset, 1)

    def read16(self, offset: int) -> int:
        return self._read_slow(offset, 2)

    def read32(self, offset: int) -> int:
        return self._read_slow(offset, 4)

    def read64(self, offset: int) -> int:
        return self._read_slow(offset, 8)

    def write8(self, offset: int, value: int) -> None:
        self._write_slow(offset, 1, value)

    def write16(self, offset: int, value: int) -> None:
        self._write_slow(offset, 2, value)

    def write32(self, offset: int, value: int) -> None:
        self._write_slow(offset, 4, value)

    def write64(self, offset: int, value: int) -> None:
        self._write_slow(offset, 8, value)


# ---------------------------------------------------------------------------------------
# Device
# ---------------------------------------------------------------------------------------


_PCI_IRQ_INDEX_NAMES = {uapi.VFIO_PCI_INTX_IRQ_INDEX: "INTx", uapi.VFIO_PCI_MSI_IRQ_INDEX: "MSI",
                        uapi.VFIO_PCI_MSIX_IRQ_INDEX: "MSI-X", uapi.VFIO_PCI_ERR_IRQ_INDEX: "ERR",
                        uapi.VFIO_PCI_REQ_IRQ_INDEX: "REQ"}


def _irq_index_label(dev: "Device", index: int) -> str:
    name = _PCI_IRQ_INDEX_NAMES.get(index) if dev.info.is_pci else None
    return f" ({name})" if name else ""


class IrqVectors(Resource):
    """Eventfds programmed as triggers for a range of vectors of one IRQ index.

    Owned by the :class:`Device`; ``close()`` disables the vectors in the device
    (SET_IRQS with fd -1) and closes the eventfds.
    """

    def __init__(self, device: "Device", index: int, start: int, efds: list):
        self.device, self.index, self.start, self.eventfds = device, index, start, efds

    def __getitem__(self, i: int) -> EventFd:
        return self.eventfds[i]

    def __len__(self) -> int:
        return len(self.eventfds)

    def close(self) -> None:
        if not self.eventfds:
            return
        try:
            if self.device.backend is not None and self.device._irq_owner.get(self.index) is self:
                self.device.disable_irq(self.index)
        finally:
            self._release_eventfds()

    def _release_eventfds(self) -> None:
        """Close the eventfds (the device's triggers are the caller's business);
        the list is emptied first, so a second call does nothing."""
        efds, self.eventfds = self.eventfds, []
        close_eventfds(efds)


class Interface(str, Enum):
    """How a device was opened.  A ``str`` so that ``dev.interface == "cdev"`` holds."""
    CONTAINER = "container"     # group + type1 container
    CDEV = "cdev"               # /dev/vfio/devices/vfioN + iommufd
    NOIOMMU = "noiommu"         # group + no-IOMMU container: no DMA space
    REPLAY = "replay"           # a record file, no kernel
    MODEL = "model"             # a Python device model (vfio.model), no kernel

    def __str__(self) -> str:
        return self.value


class Device(Resource):
    """A VFIO device over a backend: info, regions, IRQs, reset.

    Owns the backend and anything handed to it in ``owns`` (leases on the group,
    container, IOAS or iommufd the device was opened through), closing them in
    reverse order after the device fd.  What it was opened through is given to
    the constructor by the opener (:meth:`vfio.container.Container.open_device`,
    :meth:`vfio.iommufd.IOAS.open_device`, :meth:`vfio.group.Group.open_device`):

    * ``dma``: the DMA space its DMA goes through (Container or IOAS; None when
      unknown, e.g. replay, or in no-IOMMU mode);
    * ``interface``: an :class:`Interface`, or None;
    * ``group``, ``container``: the Group and Container (container path), else None;
    * ``ioas``, ``iommufd``: the IOAS and IommuFD it is attached to (cdev path), else None;
    * ``dt``: the device-tree origin of its regions and IRQs (a
      :class:`vfio.platform.DtOrigins`, or a function making one from the
      :class:`DeviceInfo`), for a platform device or a replayed capture of one; else None.
    """

    def __init__(self, backend: DeviceBackend, owns: Sequence = (), *, dma=None,
                 interface: Interface | None = None, group=None, container=None,
                 ioas=None, iommufd=None, dt=None):
        self.backend = backend
        self.name = backend.name
        self.dma = dma
        self.interface = None if interface is None else Interface(interface)
        self.group = group
        self.container = container
        self.ioas = ioas
        self.iommufd = iommufd
        self._owns = list(owns)
        self._regions: dict[int, Region] = {}
        self._irq_owner: dict[int, IrqVectors] = {}
        self._extra_efds: list[EventFd] = []
        self.dt = None
        try:
            self.info = self._get_device_info()
            self.dt = dt(self.info) if callable(dt) else dt
        except BaseException:
            self.close()
            raise

    # ---- info ------------------------------------------------------------------------
    @property
    def _be(self) -> DeviceBackend:
        if self.backend is None:
            raise VfioError(errno.EBADF, f"device {self.name} is closed")
        return self.backend

    def _get_device_info(self) -> DeviceInfo:
        what = f"VFIO_DEVICE_GET_INFO on {self.name}"
        buf = uapi.variable_info(self._be.get_info, uapi.vfio_device_info, what)
        hdr = uapi.vfio_device_info.from_buffer_copy(buf)
        caps = ()
        if hdr.flags & uapi.VFIO_DEVICE_FLAGS_CAPS and hdr.cap_offset:
            caps = tuple(UnknownCap(c.id, c.version, c.data) for c in
                         uapi.iter_caps(buf, hdr.cap_offset, what, ctypes.sizeof(uapi.vfio_device_info)))
        return DeviceInfo(hdr.flags, hdr.num_regions, hdr.num_irqs, caps)

    def region_info(self, index: int) -> RegionInfo:
        what = f"VFIO_DEVICE_GET_REGION_INFO index {index} on {self.name}"
        buf = uapi.variable_info(lambda argsz: self._be.get_region_info(index, argsz),
                                 uapi.vfio_region_info, what)
        try:
            return parse_region_info(buf, what)
        except ValueError as e:
            raise VfioError(errno.EPROTO, str(e)) from None

    def region(self, index: int) -> Region:
        r = self._regions.get(index)
        if r is None:
            r = self._regions[index] = Region(self, self.region_info(index))
        return r

    @property
    def regions(self) -> list:
        """Every region the kernel describes, empty ones (size 0) included.

        ``num_regions`` counts fixed indexes a device may not have: vfio-pci answers
        EINVAL for the VGA region (index 8) of a device that is not VGA.  Those are
        left out here; ``region(i)`` still raises for them.
        """
        out = []
        for i in range(self.info.num_regions):
            try:
                out.append(self.region(i))
            except VfioError as e:
                if e.errno != errno.EINVAL:
                    raise
        return out

    @property
    def config(self) -> Region:
        """vfio-pci's config-space region."""
        if not self.info.is_pci:
            raise VfioError(errno.EINVAL, f"config space of {self.name}: not a PCI device")
        return self.region(uapi.VFIO_PCI_CONFIG_REGION_INDEX)

    def region_origin(self, index: int):
        """The device-tree node and ``reg`` entry region ``index`` comes from (a
        :class:`vfio.platform.DtOrigin`), or None (a PCI device, or no origin known)."""
        return self.dt.region(index) if self.dt is not None else None

    def irq_origin(self, index: int):
        """The device-tree node and ``interrupts`` entry IRQ ``index`` comes from, or None."""
        return self.dt.irq(index) if self.dt is not None else None

    def irq_info(self, index: int) -> IrqInfo:
        st = uapi.vfio_irq_info.from_buffer_copy(self._be.get_irq_info(index))
        return IrqInfo(st.index, st.flags, st.count)

    # ---- interrupts (commands with side effects) --------------------------------------
    def set_irqs(self, index: int, flags: int, start: int = 0, count: int = 0, data: bytes = b"") -> None:
        """Raw SET_IRQS: ``flags`` is one DATA_* | one ACTION_*."""
        self._be.set_irqs(uapi.build_irq_set(flags, index, start, count, data))

    def enable_irq(self, index: int, count: int | None = None, start: int = 0) -> IrqVectors:
        """Create eventfds and program them as triggers for vectors start..start+count-1.

        ``count`` defaults to every vector of the index.  Replaces (and closes) the
        eventfds of an earlier ``enable_irq`` on the same index.

        Raises :class:`VfioError` with errno EINVAL (the kernel's answer to the same
        SET_IRQS) before any SET_IRQS when the device has no vectors on ``index``
        (e.g. no MSI capability: ``irq_info(index).count`` is 0) or when
        start..start+count-1 goes past the vectors it has; the kernel's errors
        otherwise (EINVAL for an index the device does not have at all).
        """
        info = self.irq_info(index)
        what = f"enable IRQ index {index}{_irq_index_label(self, index)} on {self.name}"
        if info.count == 0:
            raise VfioError(errno.EINVAL, f"{what}: the device has no vectors on this index "
                                          "(GET_IRQ_INFO count 0)")
        if count is None:
            count = info.count - start
        if start < 0 or count < 1 or start + count > info.count:
            raise VfioError(errno.EINVAL, f"{what}: vectors {start}..{start + count - 1} asked, "
                                          f"the device has {info.count} (0..{info.count - 1})")
        efds = [EventFd(f"{self.name} irq {index}.{start + i}") for i in range(count)]
        try:
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER,
                          start, count, uapi.irq_set_data_eventfds([e.fd for e in efds]))
        except BaseException:
            close_eventfds(efds)
            raise
        old = self._irq_owner.get(index)
        vec = self._irq_owner[index] = IrqVectors(self, index, start, efds)
        if old is not None:
            old._release_eventfds()
        return vec

    def disable_irq(self, index: int) -> None:
        """Tear down every trigger of ``index`` (DATA_NONE | ACTION_TRIGGER, count 0)."""
        self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0)
        vec = self._irq_owner.pop(index, None)
        if vec is not None:
            vec._release_eventfds()

    def _action(self, index: int, action: int, start: int, count: int, values=None) -> None:
        if values is None:
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_NONE | action, start, count)
        else:
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_BOOL | action, start, len(values),
                          uapi.irq_set_data_bools(values))

    def mask_irq(self, index: int, start: int = 0, count: int = 1, values=None) -> None:
        self._action(index, uapi.VFIO_IRQ_SET_ACTION_MASK, start, count, values)

    def unmask_irq(self, index: int, start: int = 0, count: int = 1, values=None) -> None:
        self._action(index, uapi.VFIO_IRQ_SET_ACTION_UNMASK, start, count, values)

    def trigger_irq(self, index: int, start: int = 0, count: int = 1, values=None) -> None:
        """Loopback trigger: the kernel signals the vectors' eventfds as if the device fired."""
        self._action(index, uapi.VFIO_IRQ_SET_ACTION_TRIGGER, start, count, values)

    def unmask_eventfd(self, index: int, start: int = 0) -> EventFd:
        """An eventfd whose signal unmasks the vector (INTx resample, the KVM resamplefd use)."""
        e = EventFd(f"{self.name} irq {index}.{start} unmask")
        try:
            self.set_irqs(index, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_UNMASK,
                          start, 1, uapi.irq_set_data_eventfds([e.fd]))
        except BaseException:
            e.close()
            raise
        self._extra_efds.append(e)
        return e

    # ---- device features (VFIO_DEVICE_FEATURE) ------------------------------------------
    def feature(self, feature: int, flags: int, data: bytes = b"") -> bytes:
        """Raw VFIO_DEVICE_FEATURE: ``flags`` is GET/SET/PROBE; returns the data part
        as the kernel left it (what a GET filled in)."""
        hdr = uapi.vfio_device_feature(ctypes.sizeof(uapi.vfio_device_feature) + len(data),
                                       (feature & uapi.VFIO_DEVICE_FEATURE_MASK) | flags)
        out = self._be.feature(bytes(hdr) + bytes(data))
        return out[ctypes.sizeof(uapi.vfio_device_feature):]

    def supports_feature(self, feature: int, get: bool = False, set: bool = False) -> bool:
        """PROBE a feature (with the GET/SET access asked for).  The kernel's ENOTTY
        (unknown or unsupported feature) is the answer False; other errors raise."""
        flags = uapi.VFIO_DEVICE_FEATURE_PROBE | (uapi.VFIO_DEVICE_FEATURE_GET if get else 0) | \
            (uapi.VFIO_DEVICE_FEATURE_SET if set else 0)
        try:
            self.feature(feature, flags)
        except VfioError as e:
            if e.errno == errno.ENOTTY:
                return False
            raise
        return True

    def migration_flags(self) -> int:
        """VFIO_MIGRATION_* flags of a migratable device (ENOTTY if it is not)."""
        data = self.feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION, uapi.VFIO_DEVICE_FEATURE_GET,
                            bytes(uapi.vfio_device_feature_migration()))
        return uapi.vfio_device_feature_migration.from_buffer_copy(data).flags

    def migration_state(self) -> int:
        """The device's VFIO_DEVICE_STATE_* (a state accessor: no side effect)."""
        data = self.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, uapi.VFIO_DEVICE_FEATURE_GET,
                            bytes(uapi.vfio_device_feature_mig_state(data_fd=-1)))
        return uapi.vfio_device_feature_mig_state.from_buffer_copy(data).device_state

    def set_migration_state(self, state: int) -> int:
        """Move the migration FSM to ``state``; returns the data fd the arc opened, or -1.
        The caller owns a returned fd."""
        data = self.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE, uapi.VFIO_DEVICE_FEATURE_SET,
                            bytes(uapi.vfio_device_feature_mig_state(device_state=state, data_fd=-1)))
        return uapi.vfio_device_feature_mig_state.from_buffer_copy(data).data_fd

    _migration = None

    @property
    def migration(self):
        """The device's migration interface (:class:`vfio.migration.Migration`: features,
        state, ``set_state`` along the kernel's arcs, ``save``/``load`` of a stream).  One per
        device; an open data transfer session closes with the device."""
        if self._migration is None:
            from .migration import Migration
            self._migration = Migration(self)
        return self._migration

    def low_power_entry(self) -> None:
        """Let the device enter D3cold-capable low power (vfio-pci runtime PM)."""
        self.feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, uapi.VFIO_DEVICE_FEATURE_SET)

    def low_power_exit(self) -> None:
        self.feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_EXIT, uapi.VFIO_DEVICE_FEATURE_SET)

    # ---- bus mastering ------------------------------------------------------------------
    @property
    def bus_master(self) -> bool:
        """Whether the Bus Master bit of the PCI Command register is set (a state accessor).

        vfio-pci leaves it off when the device is opened, and a device without it
        can neither DMA nor send MSI/MSI-X (an MSI is a memory write): call
        :meth:`enable_bus_master` before using ``dev.dma`` or MSI vectors.
        """
        from .pci import regs
        return bool(self.config.read16(regs.COMMAND) & regs.COMMAND_MASTER)

    def enable_bus_master(self) -> None:
        """Set the Bus Master bit in the Command register, through the config region."""
        self._set_bus_master(True)

    def disable_bus_master(self) -> None:
        """Clear the Bus Master bit: the device stops initiating DMA and MSIs."""
        self._set_bus_master(False)

    def _set_bus_master(self, on: bool) -> None:
        from .pci import regs
        cfg = self.config
        cmd = cfg.read16(regs.COMMAND)
        new = cmd | regs.COMMAND_MASTER if on else cmd & ~regs.COMMAND_MASTER
        if new != cmd:
            cfg.write16(regs.COMMAND, new)

    # ---- resets (commands) -----------------------------------------------------------
    def reset(self) -> None:
        self._be.reset()

    def hot_reset_info(self) -> HotResetInfo:
        what = f"VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on {self.name}"
        argsz = ctypes.sizeof(uapi.vfio_pci_hot_reset_info)
        # the kernel answers ENOSPC (not a larger argsz alone) when the list does not fit
        for _ in range(4):
            try:
                buf = self._be.get_pci_hot_reset_info(argsz)
            except VfioError as e:
                if e.errno != errno.ENOSPC:
                    raise
                buf = None
            if buf is not None:
                break
            argsz = argsz * 4 + 64 * ctypes.sizeof(uapi.vfio_pci_dependent_device)
        else:
            raise VfioError(errno.ENOSPC, what)
        hdr = uapi.vfio_pci_hot_reset_info.from_buffer_copy(buf)
        dsz = ctypes.sizeof(uapi.vfio_pci_dependent_device)
        base = ctypes.sizeof(uapi.vfio_pci_hot_reset_info)
        if base + hdr.count * dsz > len(buf):
            raise VfioError(errno.EPROTO, f"{what}: {hdr.count} devices do not fit a {len(buf)}-byte answer")
        devs = []
        for i in range(hdr.count):
            d = uapi.vfio_pci_dependent_device.from_buffer_copy(buf, base + i * dsz)
            devs.append(HotResetDevice(d.group_id, d.segment, d.bus, d.devfn))
        return HotResetInfo(hdr.flags, tuple(devs))

    def hot_reset(self, group_fds) -> None:
        self._be.pci_hot_reset(uapi.build_hot_reset(list(group_fds)))

    # ---- lifetime --------------------------------------------------------------------
    def fileno(self) -> int:
        return self.backend.fileno()

    def close(self) -> None:
        if self.backend is None:
            return
        try:
            if self._migration is not None:
                self._migration.close()     # a data fd before the device it belongs to
            for r in self._regions.values():
                r.close()
            self._regions.clear()
            for vec in list(self._irq_owner.values()):
                vec._release_eventfds()
            self._irq_owner.clear()
            extra, self._extra_efds = self._extra_efds, []
            close_eventfds(extra)
        finally:
            backend, self.backend = self.backend, None
            try:
                backend.close()
            finally:
                while self._owns:
                    self._owns.pop().close()

    @property
    def closed(self) -> bool:
        return self.backend is None


    def __repr__(self) -> str:
        return f"Device({self.name!r}, flags={self.info.flags:#x}, regions={self.info.num_regions}, irqs={self.info.num_irqs})"
