"""Raw memory: the one module that maps memory and touches it by address.

The toolkit reads and writes three kinds of memory directly, without a system
call per access:

* **mapped device regions** (:class:`vfio.device.MappedRegion`): a BAR mmap'ed
  from the VFIO device fd.  Every load or store there is a bus transaction of
  that width at that offset; a device may accept only some widths (QEMU's edu
  takes 4 and 8 bytes) and a register may act on a read.  So each access must
  be exactly one load or store of the width asked for, and a bulk copy must
  never become a ``memcpy`` (whose widths are the C library's choice).
* **DMA buffers** (:class:`vfio.dma.DmaBuffer`): RAM pinned and mapped at an
  IOVA; the IOMMU is told its address.
* **direct areas** (:class:`vfio.pci.passthrough.DirectArea`): parts of a BAR a
  VMM installs as guest memory, by host address.

What is unsafe here, and why it is safe as used:

* :func:`map_fd`/:func:`map_anonymous` are the one ``mmap`` chokepoint (like
  :func:`vfio.uapi.ioctl` for ioctls): a refusal becomes :class:`VfioError`
  with the kernel's errno and what was being mapped.
* :func:`base_address` takes a mapping's address with ``ctypes``.  The number is
  valid while the ``mmap`` object is open: its owner must keep the object
  (never only the number) and close it only through :func:`release`.
* :class:`WordViews` casts a mapping to one ``memoryview`` per access width.
  A native-format item access (``view[i]``, ``view[i] = v``) is one aligned
  load or store of the item's size in CPython (``memcpy`` of a constant size
  into a local, which the compiler emits as a single move), refuses a value
  that does not fit the width (``ValueError``) and checks the index.  The views
  export the mapping, so it cannot be unmapped under them; they are never
  handed out, never sliced into a copy (a ``memcpy``) and are released before
  the mapping is closed.  ``struct.pack_into`` is never used on device memory:
  it clears the destination with ``memset`` before storing.
* :func:`copy_from`/:func:`copy_to` read and write memory known only by its
  address (a software IOMMU's IOVA table); the table's owner guarantees the
  mapping outlives the copy, since nothing else can.
* :func:`release` closes a mapping even while a view made by a caller still
  exports it (then the memory stays mapped until the last view goes).
"""

from __future__ import annotations

import ctypes
import mmap
import struct
import sys

from .errors import InvalidValue, RegionAccessError, wrap_oserror

PAGE_SIZE = mmap.PAGESIZE
PROT_RW = mmap.PROT_READ | mmap.PROT_WRITE

#: access width in bytes -> native memoryview/struct format of that size
WIDTH_FORMAT = {1: "B", 2: "H", 4: "I", 8: "Q"}
#: values of device registers are in the CPU's byte order, as a C driver's loads
BYTE_ORDER = sys.byteorder


# ---- mapping and lifetime ---------------------------------------------------------------

def map_fd(fd: int, length: int, offset: int, prot: int, what: str) -> mmap.mmap:
    """``mmap`` ``length`` bytes of ``fd`` at ``offset`` (MAP_SHARED).

    Raises :class:`VfioError` (the kernel's errno -- EINVAL for an offset that is
    not page-aligned; ``what`` says what was being mapped on which device) or
    :class:`InvalidValue` for a length <= 0 or a negative offset, before any
    system call.
    """
    if length <= 0 or offset < 0:
        raise InvalidValue(f"{what}: the length must be positive and the offset not negative")
    try:
        return mmap.mmap(fd, length, mmap.MAP_SHARED, prot, offset=offset)
    except OSError as e:
        raise wrap_oserror(e, what) from None
    except (ValueError, OverflowError) as e:     # Python's own refusals (a length past an fd's size)
        raise InvalidValue(f"{what}: {e}") from None


def map_anonymous(length: int, what: str) -> mmap.mmap:
    """Private anonymous read/write memory (page-granular).  Raises :class:`VfioError`
    (ENOMEM, ...) where the kernel refuses, :class:`InvalidValue` for a length <= 0."""
    if length <= 0:
        raise InvalidValue(f"{what}: mmap of {length} bytes: the length must be positive")
    try:
        return mmap.mmap(-1, length, mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, PROT_RW)
    except OSError as e:
        raise wrap_oserror(e, what) from None


def base_address(mm: mmap.mmap) -> int:
    """The address the mapping starts at (for the IOMMU, or a KVM memory slot).

    ``c_char.from_buffer`` exports the mapping only while the temporary ctypes
    object lives (this call), so holding the number does not keep the memory
    mapped: the caller must keep ``mm`` open as long as anything uses the address.
    Needs a writable mapping (ctypes refuses a read-only buffer).
    """
    return ctypes.addressof(ctypes.c_char.from_buffer(mm))


def copy_from(address: int, length: int) -> bytes:
    """``length`` bytes at ``address``: memory found by address, not through a mapping object
    (a software IOMMU's table, :class:`vfio.model.SoftIommu`).  The caller must know the
    range is mapped and stays mapped during the call: ctypes cannot check it."""
    return ctypes.string_at(address, length)


def copy_to(address: int, data) -> None:
    """Store ``data`` at ``address``; the same contract as :func:`copy_from`."""
    ctypes.memmove(address, bytes(data), len(data))


def release(mm: mmap.mmap) -> None:
    """Close an ``mmap.mmap`` the caller is giving up, even while a view still refers to it.

    ``mmap.close()`` raises ``BufferError`` while a memoryview or a ctypes object
    made with ``from_buffer`` still exports the mapping (a caller's
    ``host_address``/``view()``).  Swallowing it is safe: the mmap object is not
    unmapped then -- the exporting view holds a reference to it, and CPython
    unmaps it only when the last view is released -- so no pointer is left
    dangling; the owner just stops referring to it.  What had to happen before
    (the DMA unmap from the IOMMU, the device fd's close) does not depend on it.
    """
    try:
        mm.close()
    except BufferError:
        pass


# ---- checks -----------------------------------------------------------------------------

def check_span(offset: int, length: int, size: int, what: str) -> None:
    """Refuse (:class:`RegionAccessError`) ``length`` bytes at ``offset`` outside ``size`` bytes."""
    if offset < 0 or length < 0 or offset + length > size:
        raise RegionAccessError(f"{what}: access of {length} bytes at {offset:#x} is outside its {size:#x} bytes")


def check_access(offset: int, width: int, size: int, what: str) -> None:
    """Refuse (:class:`RegionAccessError`) a ``width``-byte access outside ``size`` bytes,
    of a width other than 1, 2, 4 or 8, or not naturally aligned."""
    if width not in WIDTH_FORMAT:
        raise RegionAccessError(f"{what}: {width}-byte access at {offset:#x}: only 1, 2, 4 or 8")
    if offset < 0 or offset + width > size:
        raise RegionAccessError(f"{what}: {width}-byte access at {offset:#x} is outside its {size:#x} bytes")
    if offset % width:
        raise RegionAccessError(f"{what}: {width}-byte access at {offset:#x} is not naturally aligned")


def check_value(value, width: int, offset: int, what: str) -> int:
    """``value`` as an int that fits ``width`` bytes unsigned, else :class:`InvalidValue`
    naming the value, the width and the offset (never truncated)."""
    try:
        v = value.__index__()
    except (AttributeError, TypeError):
        raise InvalidValue(f"{what}: {8 * width}-bit write at {offset:#x}: {value!r} is not an integer") from None
    if not 0 <= v < 1 << (8 * width):
        raise InvalidValue(f"{what}: value {v:#x} does not fit the {8 * width}-bit write at {offset:#x} "
                           f"(0..{(1 << (8 * width)) - 1:#x})")
    return v


def runs(offset: int, length: int) -> list[tuple[int, int, int]]:
    """How a bulk access of ``length`` bytes at ``offset`` is split: ``(offset, width,
    count)`` runs of naturally aligned accesses, in ascending offset order.

    At each place the widest of 8, 4, 2, 1 bytes that is aligned there and fits
    before the end (as the kernel's vfio-pci ``do_io_rw`` does): rising pieces up
    to the first 8-aligned offset (1, then 2, then 4 bytes, each at most once),
    one run of 8-byte words, then falling pieces (4, 2, 1, each at most once).
    E.g. 0x1 + 0x16 bytes: 1@0x1 2@0x2 4@0x4 8@0x8 4@0x10 2@0x14 1@0x16, and an
    8-aligned block of 4 KiB: 512 8-byte words (never a byte-wise copy of what
    could be words).
    """
    out = []
    end = offset + length
    pos = offset
    while pos < end and pos & 7:
        w = 4 if not pos & 3 and pos + 4 <= end else 2 if not pos & 1 and pos + 2 <= end else 1
        out.append((pos, w, 1))
        pos += w
    n8 = (end - pos) >> 3
    if n8:
        out.append((pos, 8, n8))
        pos += 8 * n8
    while pos < end:
        w = 4 if pos + 4 <= end else 2 if pos + 2 <= end else 1      # pos is 8-aligned here, then 4-, 2-
        out.append((pos, w, 1))
        pos += w
    return out


def pieces(offset: int, length: int) -> list[tuple[int, int]]:
    """:func:`runs` as single ``(offset, width)`` accesses."""
    return [(o + i * w, w) for o, w, n in runs(offset, length) for i in range(n)]


# ---- word views over a mapping -------------------------------------------------------------

_EMPTY = memoryview(b"")


class WordViews:
    """One memoryview per access width over ``length`` bytes of a mapping, made once.

    ``v1``, ``v2``, ``v4``, ``v8`` are the ``B``/``H``/``I``/``Q`` casts: item ``i`` of
    ``vN`` is the N-byte word at byte offset ``i * N``, and indexing it is one
    N-byte load or store (module docstring).  A cast covers the whole words that
    fit ``length``; an index past them raises ``IndexError``.  After
    :meth:`release` every view is empty, so an access raises ``IndexError``
    instead of touching memory.  The owner must call :meth:`release` before it
    closes the mapping (the views export it).  ``WordViews()`` is the empty set.
    """

    __slots__ = ("length", "readonly", "v1", "v2", "v4", "v8", "by_width")

    def __init__(self, mm: mmap.mmap | None = None, length: int = 0):
        base = memoryview(mm)[:length] if mm is not None else _EMPTY
        self.length = len(base)
        self.readonly = base.readonly
        self.v1 = base
        self.v2, self.v4, self.v8 = (base[:len(base) // w * w].cast(WIDTH_FORMAT[w]) for w in (2, 4, 8))
        self.by_width = {1: self.v1, 2: self.v2, 4: self.v4, 8: self.v8}

    def release(self) -> None:
        """Empty every view, then release the old ones (the casts before their base)."""
        old = (self.v8, self.v4, self.v2, self.v1)
        self.length = 0
        self.v1 = self.v2 = self.v4 = self.v8 = _EMPTY
        self.by_width = {1: _EMPTY, 2: _EMPTY, 4: _EMPTY, 8: _EMPTY}
        for v in old:
            if v is not _EMPTY:
                v.release()

    def read_block(self, offset: int, length: int) -> bytes:
        """Bulk read inside the views, split as :func:`runs` says.  The 8-byte run is
        read by ``tolist()``, a C loop of one 8-byte load per item, in order.  The
        caller has checked the span."""
        out = bytearray(length)
        for pos, w, n in runs(offset, length):
            i = pos - offset
            if n == 1:
                out[i:i + w] = self.by_width[w][pos // w].to_bytes(w, BYTE_ORDER)
            else:
                words = self.v8[pos >> 3:(pos >> 3) + n].tolist()
                out[i:i + 8 * n] = struct.pack(f"{n}Q", *words)     # into RAM: memset harmless
        return bytes(out)

    def write_block(self, offset: int, data) -> None:
        """Bulk write inside the views, split as :func:`runs` says, each piece one
        store, in order (a Python loop: no C routine stores word by word without a
        memset or memcpy first).  The caller has checked the span and that the
        views are writable."""
        src = memoryview(data).cast("B")
        for pos, w, n in runs(offset, len(src)):
            i = pos - offset
            if n == 1:
                self.by_width[w][pos // w] = int.from_bytes(src[i:i + w], BYTE_ORDER)
            else:
                v8, j = self.v8, pos >> 3
                for x in src[i:i + 8 * n].cast("Q"):
                    v8[j] = x
                    j += 1
