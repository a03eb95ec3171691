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
import struct
from bisect import bisect_right
from dataclasses import dataclass
from operator import itemgetter

from .errors import InvalidValue, IovaExhausted, IovaNotAllocated, RegionAccessError
from . import memory, uapi
from ._resource import Resource

PAGE_SIZE = mmap.PAGESIZE


def _round_up(n: int, align: int) -> int:
    return (n + align - 1) // align * align


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class IoctlArgs:
    """Reusable argument structs of one hot ioctl (DMA map/unmap), for the primitives
    of :class:`DmaSpace` implementations.

    Building a ``ctypes`` struct per call costs about as much as the rest of a
    map in CPython; filling a spare one with one ``struct.pack_into`` costs a
    sixth of it.  The packing layout is derived here from the type's
    ``_fields_`` (unsigned integers only) and checked against its offsets, so the
    struct keeps one home in :mod:`vfio.uapi`.  ``pack_into`` refuses what does
    not fit a field (``struct.error``): the caller then takes its general path.

    ``spare`` holds structs no call is using; :meth:`call` ``pop()``s one (or makes
    ``new()`` when none is left) and ``append()``s it back once it has read the
    kernel's answer.  Both are single list operations, atomic under the GIL, so
    two threads (or a signal handler) never fill the same struct.
    """

    __slots__ = ("new", "size", "pack_into", "spare")

    def __init__(self, ctype):
        fmt = "="
        for name, ftype in ctype._fields_:
            code = _INT_CODES.get(ctypes.sizeof(ftype))
            if code is None or ftype(-1).value < 0:
                raise TypeError(f"{ctype.__name__}.{name}: not an unsigned integer field")
            fmt += code
            if struct.calcsize(fmt) != getattr(ctype, name).offset + ctypes.sizeof(ftype):
                raise TypeError(f"{ctype.__name__}.{name}: padding the packed layout does not have")
        if struct.calcsize(fmt) != ctypes.sizeof(ctype):
            raise TypeError(f"{ctype.__name__}: tail padding the packed layout does not have")
        self.new = ctype
        self.size = ctypes.sizeof(ctype)
        self.pack_into = struct.Struct(fmt).pack_into
        self.spare: list = []

    def call(self, fd: int, request: int, values: tuple, answer: str | None = None):
        """Issue ``request`` on ``fd`` with a spare struct holding ``values`` (every field
        after ``argsz``, which is filled in here); return the field ``answer`` of the
        kernel's reply, or None.

        Raises :class:`~vfio.errors.InvalidValue` when a value does not fit its field
        (refused, never truncated), and :class:`~vfio.errors.VfioError` from
        :func:`vfio.uapi.ioctl` with the errno when the kernel says no; the caller
        words that error (it knows the IOVA and the context), so no text is built
        on the way in.
        """
        try:
            st = self.spare.pop()
        except IndexError:
            st = self.new()
        try:
            try:
                self.pack_into(st, 0, self.size, *values)
            except struct.error:
                raise InvalidValue(f"{self.new.__name__}: {tuple(hex(v) if isinstance(v, int) else v for v in values)}"
                                   f" does not fit its unsigned fields") from None
            uapi.ioctl(fd, request, st)
            return getattr(st, answer) if answer else None
        finally:
            self.spare.append(st)


class DmaBuffer(Resource):
    """Page-aligned memory for DMA: anonymous (default) or backed by a memfd
    (shareable with another process, e.g. a VMM's guest RAM).  Owns its mapping."""

    def __init__(self, size: int, memfd: bool = False, name: str = "vfio-dma"):
        if size <= 0:
            raise InvalidValue(f"DMA buffer size must be positive, got {size}")
        self.size = _round_up(size, PAGE_SIZE)
        self.fd = -1
        what = f"DMA buffer {name!r} of {self.size:#x} bytes"
        if memfd:
            self.fd = os.memfd_create(name, os.MFD_CLOEXEC)
            try:
                os.ftruncate(self.fd, self.size)
                self.mem = memory.map_fd(self.fd, self.size, 0, memory.PROT_RW, f"{what} (memfd)")
            except BaseException:
                os.close(self.fd)
                raise
        else:
            self.mem = memory.map_anonymous(self.size, what)
        #: where the IOMMU is told the buffer is; valid while the buffer is open (it owns ``mem``)
        self.vaddr = memory.base_address(self.mem)

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
        memory.check_span(offset, length, self.size, "DMA buffer")

    def close(self) -> None:
        if self.mem is not None:
            mem, self.mem = self.mem, None
            memory.release(mem)
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class IovaAllocator:
    """First-fit IOVA allocation inside inclusive ``(start, end)`` ranges.

    Freed blocks are merged back.  :meth:`alloc` never hands out addresses
    below ``floor`` (IOVA 0 looks like a NULL pointer to many devices), but a
    caller may :meth:`reserve` them (a VMM maps guest RAM at guest-physical 0).

    ``align`` is fixed at construction: every free block starts and ends on a
    multiple of it (ranges are trimmed inward, sizes rounded up).  Ranges that
    overlap or touch are one block; the free list stays sorted and merged, so
    :meth:`free` merges a block with its two neighbours only (found by bisection).

    The usual pattern -- map a buffer, unmap it, map one of the same size again --
    costs O(1) and touches no block: freeing what the last allocation handed out
    puts the free list back exactly as it was (it is kept merged), so first fit
    for that size is that IOVA again.  The next ``alloc`` of that size hands it
    out without writing it into the free list (``_lazy``), and freeing it then
    undoes nothing; any other call first writes the lazy allocation in
    (:meth:`_settle`).  The answers are those of the full first-fit scan.
    """

    def __init__(self, ranges, align: int = PAGE_SIZE, floor: int = 0x100000):
        self.align = align
        self.floor = floor
        self._free = []     # sorted, merged list of [start, end_exclusive), multiples of align
        for s, e in sorted(ranges):
            s = _round_up(s, align)
            e_ex = (e + 1) // align * align
            if e_ex <= s:
                continue
            if self._free and self._free[-1][1] >= s:
                self._free[-1][1] = max(self._free[-1][1], e_ex)
            else:
                self._free.append([s, e_ex])
        self._used: dict[int, int] = {}
        # _last: the last change to the free list was alloc(size) -> iova with the default
        # align and limit, kept as (size asked, floor, iova, rounded size); _again: the same
        # tuple once free(iova) has undone that change, so the free list is as it was and
        # first fit for that size is iova again; _lazy: (iova, rounded size) handed out
        # through _again and not yet written into _free/_used
        self._again = self._last = self._lazy = None
        self._tidy = True   # False once a zero-size block was taken: merging may then undo more

    def alloc(self, size: int, align: int | None = None, limit: int | None = None) -> int:
        """An IOVA for ``size`` bytes; ``limit`` (exclusive) keeps it under a device's DMA mask.
        Raises :class:`~vfio.errors.IovaExhausted` (a ``MemoryError``) when no free range fits."""
        again = self._again
        if (again is not None and again[0] == size and align is None and limit is None
                and self._lazy is None and again[1] == self.floor):
            self._lazy = (again[2], again[3])
            return again[2]
        self._settle()
        s = self._first_fit(size, align, limit)
        self._again = None
        if align is None and limit is None and self._tidy:
            self._last = (size, self.floor, s, self._used[s])
        else:
            self._last = None
        return s

    def _first_fit(self, size: int, align: int | None, limit: int | None) -> int:
        a = self.align
        if align is None or align < a:
            align = a
        size = (size + a - 1) // a * a
        floor = self.floor
        for i, blk in enumerate(self._free):
            s, end = blk
            if s < floor or s % align:
                if end <= floor and size:       # wholly below the floor: nothing fits
                    continue
                s = _round_up(max(s, floor), align)
            e = s + size
            if e <= end and (limit is None or e <= limit):
                self._take(i, s, e)
                return s
        raise IovaExhausted(f"no free IOVA range of {size:#x} bytes"
                            + (f" below {limit:#x}" if limit is not None else ""))

    def reserve(self, iova: int, size: int) -> None:
        """Mark a caller-chosen IOVA range used; it must be free and inside the ranges."""
        self._settle()
        size = _round_up(size, self.align)
        if iova % self.align:
            raise InvalidValue(f"IOVA {iova:#x} is not aligned to {self.align:#x}")
        for i, blk in enumerate(self._free):
            if blk[0] <= iova and iova + size <= blk[1]:
                self._take(i, iova, iova + size)
                self._again = self._last = None
                return
        raise InvalidValue(f"IOVA range {iova:#x}+{size:#x} is not free or not inside the usable ranges")

    def _take(self, i: int, s: int, e: int) -> None:
        # [s, e) lies inside free block i: shrink it, drop it, or split it in two
        blk = self._free[i]
        if s == e:
            self._tidy = False
        if s == blk[0]:
            if e == blk[1]:
                del self._free[i]
            else:
                blk[0] = e
        elif e == blk[1]:
            blk[1] = s
        else:
            self._free.insert(i + 1, [e, blk[1]])
            blk[1] = s
        self._used[s] = e - s

    def _settle(self) -> None:
        """Write the lazily handed-out allocation, if any, into the free list."""
        lazy = self._lazy
        if lazy is None:
            return
        self._lazy = None
        s, size = lazy
        for i, blk in enumerate(self._free):
            if blk[0] <= s and s + size <= blk[1]:
                self._take(i, s, s + size)
                break
        else:
            raise AssertionError("unreachable: a lazy allocation's block was checked free")
        self._last, self._again = self._again, None

    def free(self, iova: int) -> None:
        """Give back an IOVA :meth:`alloc` or :meth:`reserve` handed out; raises
        :class:`~vfio.errors.IovaNotAllocated` (a ``KeyError``) for any other."""
        lazy = self._lazy
        if lazy is not None and lazy[0] == iova:
            self._lazy = None           # never written in: the free list is as _again says
            return
        self._settle()
        try:
            size = self._used.pop(iova)
        except KeyError:
            raise IovaNotAllocated(f"IOVA {iova:#x} was not allocated") from None
        last = self._last
        self._again = last if last is not None and last[2] == iova and size and self._tidy else None
        self._last = None
        free = self._free
        end = iova + size
        i = bisect_right(free, iova, key=_block_start)  # free[i - 1] starts at or below iova, free[i] above
        before = free[i - 1] if i else None
        after = free[i] if i < len(free) else None
        if not size:        # an empty block (alloc(0)) may sit among touching ones: the whole-list merge
            free.append([iova, end])
            free.sort()
            self._free = _merged(free)
        elif before is not None and before[1] == iova:
            if after is not None and after[0] == end:
                before[1] = after[1]
                del free[i]
            else:
                before[1] = end
        elif after is not None and after[0] == end:
            after[0] = iova
        else:
            free.insert(i, [iova, end])


_block_start = itemgetter(0)
_new = object.__new__


def _merged(blocks: list) -> list:
    out = []
    for blk in blocks:
        if out and out[-1][1] == blk[0]:
            out[-1][1] = blk[1]
        else:
            out.append(blk)
    return out


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
        """Map ``buffer`` at ``iova`` (or one the allocator picks, below ``limit``).

        A refused map leaves nothing behind: the IOVA is freed and no mapping recorded.
        Raises :class:`~vfio.errors.IovaExhausted` when no IOVA fits, ``ValueError``
        when ``iova`` is not free, :class:`~vfio.errors.VfioError` when the kernel says no."""
        alloc = self._allocator or self.allocator
        size = buffer.size
        if iova is None:
            iova = alloc.alloc(size, None, limit)
        else:
            alloc.reserve(iova, size)
        try:
            self._map(buffer.vaddr, iova, size, readable, writable)
        except BaseException:
            alloc.free(iova)
            raise
        # DmaMapping(self, buffer, iova, size), without a call into its dataclass
        # __init__: under an emulated CPU each Python call costs microseconds, a
        # measurable share of a map (bench/bench_dma.py)
        m = _new(DmaMapping)
        m.space = self
        m.buffer = buffer
        m.iova = iova
        m.size = size
        m.owns_buffer = False
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
        """Unmap ``mapping`` (made through this space); frees its buffer if :meth:`alloc` made it.
        Raises ``ValueError`` for a mapping not (or no longer) mapped here."""
        ms = self._mappings
        if ms and ms[-1] is mapping:        # the newest: the usual case
            ms.pop()
        else:
            for i in range(len(ms) - 2, -1, -1):
                if ms[i] is mapping:
                    del ms[i]
                    break
            else:
                raise InvalidValue(f"DMA mapping at IOVA {mapping.iova:#x} is not mapped in this space")
        iova = mapping.iova
        try:
            n = self._unmap(iova, mapping.size)
        finally:
            (self._allocator or self.allocator).free(iova)
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
