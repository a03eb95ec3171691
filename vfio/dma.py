"""DMA: user memory mapped into a device's I/O address space.

A device behind an IOMMU sees I/O virtual addresses (IOVAs).  To let it DMA
into user memory, the memory is pinned and mapped at an IOVA: through the
type1 container (``VFIO_IOMMU_MAP_DMA``) or through an iommufd IOAS
(``IOMMU_IOAS_MAP``).  Only IOVAs inside the ranges the IOMMU reports may be
used (the x86 MSI window at 0xfee00000 is always a hole), in multiples of the
IOMMU's smallest page size.

:class:`DmaSpace` is the one DMA-mapping interface: :class:`vfio.container.Container`
and :class:`vfio.iommufd.IOAS` implement its two primitives (``_map``,
``_unmap``) and its range query, so user code does not care which one is
underneath.  :class:`DmaBuffer` owns page-aligned memory (anonymous or memfd);
:class:`IovaAllocator` hands out IOVAs inside the reported ranges.
"""

from __future__ import annotations

import abc
import ctypes
import mmap
import os
from dataclasses import dataclass

from .errors import InvalidValue, IovaExhausted, IovaNotAllocated, RegionAccessError
from ._resource import Resource, release_mmap

PAGE_SIZE = mmap.PAGESIZE


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


class DmaBuffer(Resource):
    """Page-aligned memory for DMA: anonymous (default) or backed by a memfd
    (shareable with another process, e.g. a VMM's guest RAM).  Owns its mapping."""

    def __init__(self, size: int, memfd: bool = False, name: str = "vfio-dma"):
        if size <= 0:
            raise InvalidValue(f"DMA buffer size must be positive, got {size}")
        self.size = _round_up(size, PAGE_SIZE)
        self.fd = -1
        if memfd:
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
            try:
                os.ftruncate(self.fd, self.size)
                self.mem = mmap.mmap(self.fd, self.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            except BaseException:
                os.close(self.fd)
                raise
        else:
            self.mem = mmap.mmap(-1, self.size, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                                 mmap.PROT_READ | mmap.PROT_WRITE)
        self.vaddr = ctypes.addressof(ctypes.c_char.from_buffer(self.mem))

    def __len__(self) -> int:
        return self.size

    def view(self) -> memoryview:
        self._check(0, 0)
        return memoryview(self.mem)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        return self.mem[offset:offset + length]

    def write(self, offset: int, data: bytes) -> None:
        self._check(offset, len(data))
        self.mem[offset:offset + len(data)] = data

    def _check(self, offset: int, length: int) -> None:
        if self.mem is None:
            raise RegionAccessError(f"DMA buffer of {self.size:#x} bytes is closed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise RegionAccessError(f"DMA buffer access of {length} bytes at {offset:#x} is outside its {self.size:#x} bytes")

    def close(self) -> None:
        if self.mem is not None:
            mem, self.mem = self.mem, None
            release_mmap(mem)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class IovaAllocator:
    """First-fit IOVA allocation inside inclusive ``(start, end)`` ranges.

    Freed blocks are merged back.  :meth:`alloc` never hands out addresses
    below ``floor`` (IOVA 0 looks like a NULL pointer to many devices), but a
    caller may :meth:`reserve` them (a VMM maps guest RAM at guest-physical 0).
    """

    def __init__(self, ranges, align: int = PAGE_SIZE, floor: int = 0x100000):
        self.align = align
        self.floor = floor
        self._free = []     # sorted list of [start, end_exclusive)
        for s, e in sorted(ranges):
            s = _round_up(s, align)
            e_ex = (e + 1) // align * align
            if e_ex > s:
                self._free.append([s, e_ex])
        self._used: dict[int, int] = {}

    def alloc(self, size: int, align: int | None = None, limit: int | None = None) -> int:
        """An IOVA for ``size`` bytes; ``limit`` (exclusive) keeps it under a device's DMA mask.
        Raises :class:`~vfio.errors.IovaExhausted` (a ``MemoryError``) when no free range fits."""
        align = max(align or self.align, self.align)
        size = _round_up(size, self.align)
        for blk in self._free:
            s = _round_up(max(blk[0], self.floor), align)
            if s + size <= blk[1] and (limit is None or s + size <= limit):
                self._take(s, size)
                return s
        raise IovaExhausted(f"no free IOVA range of {size:#x} bytes"
                            + (f" below {limit:#x}" if limit is not None else ""))

    def reserve(self, iova: int, size: int) -> None:
        """Mark a caller-chosen IOVA range used; it must be free and inside the ranges."""
        size = _round_up(size, self.align)
        if iova % self.align:
            raise InvalidValue(f"IOVA {iova:#x} is not aligned to {self.align:#x}")
        for blk in self._free:
            if blk[0] <= iova and iova + size <= blk[1]:
                self._take(iova, size)
                return
        raise InvalidValue(f"IOVA range {iova:#x}+{size:#x} is not free or not inside the usable ranges")

    def _take(self, s: int, size: int) -> None:
        for i, blk in enumerate(self._free):
            if blk[0] <= s and s + size <= blk[1]:
                pieces = []
                if blk[0] < s:
                    pieces.append([blk[0], s])
                if s + size < blk[1]:
                    pieces.append([s + size, blk[1]])
                self._free[i:i + 1] = pieces
                self._used[s] = size
                return
        raise AssertionError("unreachable: range was checked free")

    def free(self, iova: int) -> None:
        """Give back an IOVA :meth:`alloc` or :meth:`reserve` handed out; raises
        :class:`~vfio.errors.IovaNotAllocated` (a ``KeyError``) for any other."""
        try:
            size = self._used.pop(iova)
        except KeyError:
            raise IovaNotAllocated(f"IOVA {iova:#x} was not allocated") from None
        self._free.append([iova, iova + size])
        self._free.sort()
        merged = []
        for blk in self._free:
            if merged and merged[-1][1] == blk[0]:
                merged[-1][1] = blk[1]
            else:
                merged.append(blk)
        self._free = merged


@dataclass(eq=False)
class DmaMapping:
    """One mapping of a buffer at an IOVA in a :class:`DmaSpace`.

    The device sees ``size`` bytes at ``iova``; the program reaches the same memory
    with :meth:`read`, :meth:`write` and :meth:`view` (offsets relative to the
    mapping, bounds checked), or through ``buffer``.  ``unmap()`` (or leaving a
    ``with`` block) unmaps it, and frees the buffer when :meth:`DmaSpace.alloc`
    made it; unmapping an already unmapped mapping does nothing and returns 0, as
    the kernel's UNMAP_DMA of an empty range does.
    """
    space: "DmaSpace"
    buffer: DmaBuffer
    iova: int
    size: int
    owns_buffer: bool = False

    @property
    def mapped(self) -> bool:
        """Whether the mapping is still in place (False after unmap, or once its
        container lost its last group, which drops every mapping)."""
        return any(m is self for m in self.space._mappings)

    def __len__(self) -> int:
        return self.size

    def _check(self, offset: int, length: int) -> None:
        if self.owns_buffer and not self.mapped:
            raise RegionAccessError(f"DMA mapping at IOVA {self.iova:#x}: unmapped, its buffer was freed")
        if offset < 0 or length < 0 or offset + length > self.size:
            raise RegionAccessError(f"DMA mapping at IOVA {self.iova:#x}: access of {length} bytes at "
                                    f"{offset:#x} is outside its {self.size:#x} bytes")

    def read(self, offset: int, length: int) -> bytes:
        """``length`` bytes at ``offset`` of the mapping (the device's IOVA ``iova + offset``)."""
        self._check(offset, length)
        return self.buffer.read(offset, length)

    def write(self, offset: int, data: bytes) -> None:
        """Write ``data`` at ``offset`` of the mapping."""
        self._check(offset, len(data))
        self.buffer.write(offset, data)

    def view(self) -> memoryview:
        """A writable memoryview of the mapped bytes (release it before unmapping)."""
        self._check(0, 0)
        return self.buffer.view()[:self.size]

    def unmap(self) -> int:
        """Unmap (and free the buffer if this mapping allocated it); returns bytes unmapped."""
        if not self.mapped:
            return 0
        return self.space.unmap(self)

    def close(self) -> None:
        self.unmap()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.unmap()


class DmaSpace(abc.ABC):
    """An I/O address space that user memory can be mapped into for DMA."""

    def __init__(self):
        self._mappings: list[DmaMapping] = []
        self._allocator: IovaAllocator | None = None

    # ---- what implementations provide ------------------------------------------------
    @abc.abstractmethod
    def iova_ranges(self) -> list:
        """Usable IOVA ranges as inclusive (start, end) pairs."""

    @property
    @abc.abstractmethod
    def min_page_size(self) -> int:
        """The smallest IOMMU page size: the granule of IOVAs and lengths."""

    @abc.abstractmethod
    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        ...

    @abc.abstractmethod
    def _unmap(self, iova: int, size: int) -> int:
        ...

    # ---- the common interface --------------------------------------------------------
    @property
    def allocator(self) -> IovaAllocator:
        if self._allocator is None:
            self._allocator = IovaAllocator(self.iova_ranges(), align=max(PAGE_SIZE, self.min_page_size))
        return self._allocator

    def map(self, buffer: DmaBuffer, iova: int | None = None, readable: bool = True,
            writable: bool = True, limit: int | None = None) -> DmaMapping:
        """Map ``buffer`` at ``iova`` (or one the allocator picks, below ``limit``)."""
        alloc = self.allocator
        if iova is None:
            iova = alloc.alloc(buffer.size, limit=limit)
        else:
            alloc.reserve(iova, buffer.size)
        try:
            self._map(buffer.vaddr, iova, buffer.size, readable, writable)
        except BaseException:
            alloc.free(iova)
            raise
        m = DmaMapping(self, buffer, iova, buffer.size)
        self._mappings.append(m)
        return m

    def alloc(self, size: int, iova: int | None = None, memfd: bool = False, limit: int | None = None,
              readable: bool = True, writable: bool = True) -> DmaMapping:
        """A new buffer of ``size`` bytes, mapped; unmapping it frees the buffer too."""
        buf = DmaBuffer(size, memfd=memfd)
        try:
            m = self.map(buf, iova, readable, writable, limit)
        except BaseException:
            buf.close()
            raise
        m.owns_buffer = True
        return m

    def unmap(self, mapping: DmaMapping) -> int:
        """Unmap ``mapping`` (made through this space); frees its buffer if :meth:`alloc` made it."""
        for i in range(len(self._mappings) - 1, -1, -1):     # newest first: the usual case
            if self._mappings[i] is mapping:
                del self._mappings[i]
                break
        else:
            raise InvalidValue(f"DMA mapping at IOVA {mapping.iova:#x} is not mapped in this space")
        try:
            n = self._unmap(mapping.iova, mapping.size)
        finally:
            self.allocator.free(mapping.iova)
            if mapping.owns_buffer:
                mapping.buffer.close()
        return n

    def unmap_all(self) -> None:
        """Unmap every mapping made through this object (first error re-raised at the end)."""
        first = None
        while self._mappings:
            try:
                self.unmap(self._mappings[-1])
            except Exception as e:   # keep unmapping the rest, then report
                first = first or e
        if first is not None:
            raise first
