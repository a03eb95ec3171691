"""Replay: a record file served as a VFIO device.

:class:`ReplayBackend` implements :class:`vfio.backend.DeviceBackend` from a
:class:`~vfio.record.format.DeviceRecord`, so ``vfio.device.Device(ReplayBackend(path))``
is used exactly like a real device.  Where the kernel's behaviour is known
(``drivers/vfio/vfio_main.c``, ``drivers/vfio/pci/vfio_pci_core.c``,
``vfio_pci_intrs.c``, ``vfio_pci_config.c`` of Linux 6.12) replay does the same:

* Info calls: ``argsz`` below the fixed part is EINVAL; a region or IRQ index
  the file has no record for is EINVAL (the kernel refused it at capture time,
  or it is past ``num_regions``/``num_irqs``); when the capability chain does
  not fit, the answer is the header alone with ``argsz`` = the size needed and
  ``cap_offset`` 0; otherwise header + the chain exactly as captured, with
  ``cap_offset`` pointing at it.
* The fd offset space is the captured one (vfio-pci: region N at ``N << 40``).
  Reads and writes outside any region, or of a region without the READ/WRITE
  flag, are EINVAL; writes to a ROM are EINVAL; config-space accesses past its
  end are EFAULT (vfio_config_do_rw); a read or write that runs past the end
  of any other region is cut short by the kernel, which this backend turns into
  EIO exactly as :class:`vfio.device.KernelBackend` does.
* Contents: each region is a memfd (created and filled on first use from the
  captured REGION_DATA, straight from the mapped record file: no copy of the
  file is held in Python).  Uncaptured bytes read as zero.  BARs behave like
  RAM: what is written reads back (device side effects are not emulated).
* Config-space writes go through a :class:`~vfio.pci.vconfig.VirtualConfigSpace`
  over the captured bytes with the writability vfio-pci gives a user
  (:meth:`~vfio.pci.vconfig.VirtualConfigSpace.vfio_pci_user`; the real device's
  own writable bits are not in the capture, so the PCI spec's stand in for
  them), split into aligned accesses as vfio_config_do_rw splits them: in the
  standard header COMMAND (bits 0-10), cache line size, latency timer and
  interrupt line take writes; BARs and the ROM BAR take writes through masks
  sized from the captured regions, so sizing (write all ones, read back the
  size mask) works as on real hardware; STATUS (NO_WRITE in vfio-pci) and all
  other header bytes ignore writes; capability list pointers ignore writes;
  capability registers take writes only where vfio-pci's permission tables
  allow them (PM power state, MSI address/data/mask, PCIe Device Control 1/2,
  AER, VPD; vendor-specific bodies and bytes outside any capability are raw);
  MSI-X and the other capabilities are read-only.  Ignored writes still
  succeed, as they do in the kernel.
* mmap: only regions with the MMAP flag, MAP_SHARED, within the page-aligned
  size, and -- when the region has a sparse-mmap capability -- inside one of
  its areas; anything else is EINVAL.  The mapping is of the region's memfd, so
  ``pread`` sees what was stored through the mapping and vice versa.
* SET_IRQS is validated like ``vfio_set_irqs_validate_and_prepare`` (EINVAL),
  then the action like ``vfio_pci_set_irqs_ioctl`` (ENOTTY for an action the
  index does not support, e.g. masking MSI).  Trigger eventfds are dup'ed and
  kept; :meth:`ReplayBackend.fire` plays the device raising a vector (an
  automasked index masks itself, a masked one keeps the interrupt pending
  until unmasked), :meth:`ReplayBackend.irq_state` and ``irq_log`` let a test
  watch what the code under test programmed.  A vfio-platform/vfio-amba device
  (no PCI flag) answers as ``vfio_platform_set_irqs_ioctl`` does: EINVAL to
  masking an edge-triggered (not MASKABLE) line, and a mask eventfd is taken
  (its signal masks the line).  For a PCI device only one of
  INTx/MSI/MSI-X can be enabled at a time (EINVAL otherwise), and disabling an
  index that is not enabled is EINVAL, as in vfio-pci.
* RESET without the device's RESET flag is EINVAL; with it, every region goes
  back to its captured contents (mappings stay valid) and interrupt masks
  clear.  Hot reset and device features are not captured: ENOTTY.

What a record file may make replay serve is bounded by what a kernel could
have reported (checked when the backend is made, :func:`check_replayable`),
so no answer costs more than the file's own data: at most
:data:`MAX_INDEXES` region and IRQ indexes, at most :data:`MAX_IRQ_COUNT`
vectors per IRQ index (the MSI-X maximum), regions that fit the 64-bit fd
offset space without overlapping, a vfio-pci region no larger than its
``1 << 40`` window, config space no larger than PCI Express's 4 KiB, and no
region or IRQ record at an index DEVICE_INFO says the device does not have.
Region contents are sparse (a memfd of the region's size holds only the
captured bytes and what was written), so a large region costs nothing until
used.  A file outside those bounds is refused with
:class:`~vfio.record.format.RecordFormatError` naming the record's offset.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import struct
from dataclasses import dataclass, field

from .. import memory, uapi
from ..backend import DeviceBackend
from ..errors import InvalidValue, VfioError
from .format import (DeviceInfo, DeviceRecord, MappedRecord, Region, RecordFormatError, REGION_ROM, BAR_ROM,
                     DEVICE_INFO, INTERRUPT, REGION, type_name)
from ..pci import regs as pci_regs
from ..pci.config import ConfigSpace
from ..pci.vconfig import VirtualConfigSpace

PAGE_SIZE = mmap.PAGESIZE
_REGION_INFO_SIZE = ctypes.sizeof(uapi.vfio_region_info)      # 32
_DEVICE_INFO_SIZE = ctypes.sizeof(uapi.vfio_device_info)      # 24
_DEVICE_INFO_MINSZ = 16                                       # offsetofend(num_irqs)
_IRQ_INFO_SIZE = ctypes.sizeof(uapi.vfio_irq_info)            # 16
_IRQ_SET_MINSZ = ctypes.sizeof(uapi.vfio_irq_set)             # 20
_U32_MAX = 0xFFFFFFFF
_PCI_OFFSET_MASK = (1 << uapi.VFIO_PCI_OFFSET_SHIFT) - 1
_PCI_INTX, _PCI_MSI, _PCI_MSIX = (uapi.VFIO_PCI_INTX_IRQ_INDEX, uapi.VFIO_PCI_MSI_IRQ_INDEX,
                                  uapi.VFIO_PCI_MSIX_IRQ_INDEX)
_DATA_SIZE = {uapi.VFIO_IRQ_SET_DATA_NONE: 0, uapi.VFIO_IRQ_SET_DATA_BOOL: 1, uapi.VFIO_IRQ_SET_DATA_EVENTFD: 4}
_ACTIONS = (uapi.VFIO_IRQ_SET_ACTION_MASK, uapi.VFIO_IRQ_SET_ACTION_UNMASK, uapi.VFIO_IRQ_SET_ACTION_TRIGGER)


#: Most region indexes and IRQ indexes a replayed device has (``num_regions``,
#: ``num_irqs``; every index is below it).  vfio-pci reports 9 + a few
#: device-specific regions and 5 IRQ indexes; vfio-platform one per resource.
MAX_INDEXES = 1024
#: Most vectors of one IRQ index: the largest MSI-X table (PCI spec: 2048).
MAX_IRQ_COUNT = 2048
#: Largest config-space region (vfio-pci: the device's cfg_size, 256 or 4096).
MAX_CONFIG_SIZE = 4096
#: Largest region of a vfio-pci device: its window in the fd offset space.
PCI_MAX_REGION_SIZE = 1 << uapi.VFIO_PCI_OFFSET_SHIFT
#: Largest region of any other device: what a memfd (sparse) can be sized to.
MAX_REGION_SIZE = 1 << 62
_OFFSET_SPACE = 1 << 64


def _page_align(n: int) -> int:
    return (n + PAGE_SIZE - 1) & ~(PAGE_SIZE - 1)


def check_replayable(rec: DeviceRecord, path: str | None = None) -> None:
    """Refuse a record no kernel could have produced, before anything is served.

    The bounds are in the module docstring.  Raises
    :class:`~vfio.record.format.RecordFormatError` naming ``path`` (or the
    record's own), the offset of the record at fault (when the record was
    parsed from a file) and what is wrong; returns None otherwise.
    """
    path = path or rec.path

    def bad(r, rtype: int, problem: str) -> RecordFormatError:
        off = rec.offset_of(r)
        if off is None:
            return RecordFormatError(None, None, f"{type_name(rtype)}: {problem} (replay refuses it)", path)
        return RecordFormatError(off, rtype, f"{problem} (replay refuses it)", path)

    regions = rec.regions
    irqs = rec.interrupts
    info = rec.device_info
    if info is not None:
        for what, n in (("num_regions", info.num_regions), ("num_irqs", info.num_irqs)):
            if n > MAX_INDEXES:
                raise bad(info, DEVICE_INFO, f"{what} {n} is more than {MAX_INDEXES}")
    for kind, rtype, table, limit in (("region", REGION, regions, info.num_regions if info else MAX_INDEXES),
                                      ("interrupt", INTERRUPT, irqs, info.num_irqs if info else MAX_INDEXES)):
        for index, r in table.items():
            if index >= limit:
                why = (f"not below DEVICE_INFO's {'num_regions' if rtype == REGION else 'num_irqs'} {limit}: "
                       f"the kernel refuses that index" if info else f"{MAX_INDEXES} or more")
                raise bad(r, rtype, f"{kind} index {index} is {why}")
    is_pci = (info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_PCI) if info is not None else rec.pci_info is not None
    spans = []
    for index, r in regions.items():
        limit, why = (PCI_MAX_REGION_SIZE, "a vfio-pci region's window") if is_pci else \
            (MAX_REGION_SIZE, "the largest region replay serves")
        if r.is_config_space or (is_pci and index == uapi.VFIO_PCI_CONFIG_REGION_INDEX):
            limit, why = MAX_CONFIG_SIZE, "PCI Express config space"
        if r.size > limit:
            raise bad(r, REGION, f"region {index} is {r.size:#x} bytes, larger than {why} ({limit:#x})")
        if r.offset + r.size > _OFFSET_SPACE:
            raise bad(r, REGION, f"region {index} [{r.offset:#x}, +{r.size:#x}) runs past the 64-bit offset space")
        if r.size:
            spans.append((r.offset, r.offset + r.size, index, r))
    spans.sort(key=lambda s: (s[0], s[1], s[2]))
    for (a0, a1, ai, _), (b0, _b1, bi, br) in zip(spans, spans[1:]):
        if b0 < a1:
            raise bad(br, REGION, f"region {bi} at offset {b0:#x} overlaps region {ai} [{a0:#x}, {a1:#x}) "
                      f"in the device's offset space")
    for index, q in irqs.items():
        if q.count > MAX_IRQ_COUNT:
            raise bad(q, INTERRUPT, f"interrupt {index} has {q.count} vectors, more than {MAX_IRQ_COUNT}")


@dataclass
class IrqState:
    """What the code under test programmed for one IRQ index (a snapshot).

    ``triggers[v]`` is True when vector ``v`` has a trigger eventfd; ``masked``
    and ``pending`` are per vector; ``unmask_eventfd`` says whether an unmask
    (resample) eventfd is registered."""
    index: int
    triggers: list
    masked: list
    pending: list
    unmask_eventfd: bool

    @property
    def enabled(self) -> bool:
        return any(self.triggers)


@dataclass
class IrqSetCall:
    """One accepted SET_IRQS, decoded (eventfd numbers are the caller's)."""
    index: int
    flags: int
    start: int
    count: int
    data: tuple = field(default_factory=tuple)


class _Irq:
    """Live state of one IRQ index: dup'ed trigger fds (-1: none), masks."""

    def __init__(self, index: int, flags: int, count: int):
        self.index = index
        self.flags = flags
        self.count = count
        self.triggers = [-1] * count
        self.masked = [False] * count
        self.pending = [False] * count
        self.unmask_fd = -1
        self.mask_fd = -1               # vfio-platform only: an eventfd whose signal masks

    @property
    def enabled(self) -> bool:
        return any(fd >= 0 for fd in self.triggers)

    def close(self) -> None:
        for v, fd in enumerate(self.triggers):
            if fd >= 0:
                os.close(fd)
                self.triggers[v] = -1
        if self.unmask_fd >= 0:
            os.close(self.unmask_fd)
            self.unmask_fd = -1
        if self.mask_fd >= 0:
            os.close(self.mask_fd)
            self.mask_fd = -1


class ReplayBackend(DeviceBackend):
    """A record file (a path, or a :class:`DeviceRecord` already in memory) as a device."""

    def __init__(self, source, *, name: str | None = None):
        """``source``: a path (opened with :func:`vfio.record.format.open_record_file`)
        or a DeviceRecord.  Raises :class:`~vfio.record.format.RecordFormatError`
        for a file that is malformed, not a regular file, too large or outside
        what replay serves (:func:`check_replayable`), ``OSError`` when it
        cannot be opened."""
        self._mapped = None
        if isinstance(source, DeviceRecord):
            self.record = source
            self.name = name or "replay:record"
        else:
            self._mapped = MappedRecord(source)
            self.record = self._mapped.record
            self.name = name or f"replay:{os.path.basename(self._mapped.path)}"
        try:
            check_replayable(self.record)
        except BaseException:
            if self._mapped is not None:
                self._mapped.close()
            raise
        self._closed = False
        self._regions = self.record.regions
        self._by_offset = sorted((r.offset, r.offset + r.size, r) for r in self._regions.values() if r.size)
        self._info = self.record.device_info or self._derived_info()
        self._is_pci = bool(self._info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_PCI)
        self._memfds: dict[int, int] = {}
        self._cfg_space: VirtualConfigSpace | None = None     # the config write policy, built at the first write
        self._irqs = {i: _Irq(i, r.flags, r.count) for i, r in self.record.interrupts.items()}
        #: Every SET_IRQS accepted, in order (for tests to watch MASK/UNMASK/TRIGGER).
        self.irq_log: list[IrqSetCall] = []
        #: Number of successful VFIO_DEVICE_RESETs.
        self.reset_count = 0

    def _derived_info(self) -> DeviceInfo:
        """A file without DEVICE_INFO (hand-written): flags and counts from its records."""
        flags = uapi.VFIO_DEVICE_FLAGS_PCI if self.record.pci_info is not None else 0
        if not flags and any(r.dt_path for r in self._regions.values()):
            flags = uapi.VFIO_DEVICE_FLAGS_PLATFORM
        nreg = max(self._regions, default=-1) + 1
        nirq = max(self.record.interrupts, default=-1) + 1
        return DeviceInfo(flags, nreg, nirq)

    # ---- helpers -------------------------------------------------------------
    def _err(self, err: int, what: str) -> VfioError:
        return VfioError(err, f"{what} on {self.name}")

    def _live(self, what: str) -> None:
        if self._closed:
            raise self._err(errno.EBADF, f"{what}: device closed")

    @staticmethod
    def _info_answer(head: bytes, caps: bytes, argsz: int, fixed: int) -> bytes:
        """Header (+ chain when it fits) in a buffer of the caller's argsz (at least
        the fixed part, like KernelBackend's), filled as the kernel fills it."""
        out = bytearray(max(argsz, fixed))
        out[:len(head)] = head
        if caps and argsz < fixed + len(caps):
            struct.pack_into("<I", out, 0, fixed + len(caps))     # argsz := the size needed
        elif caps:
            out[fixed:fixed + len(caps)] = caps
        return bytes(out)

    # ---- info ioctls ---------------------------------------------------------
    def get_info(self, argsz: int) -> bytes:
        what = "VFIO_DEVICE_GET_INFO"
        self._live(what)
        if argsz < _DEVICE_INFO_MINSZ:
            raise self._err(errno.EINVAL, f"{what} argsz {argsz}")
        inf = self._info
        fits = not inf.caps or argsz >= _DEVICE_INFO_SIZE + len(inf.caps)
        head = bytes(uapi.vfio_device_info(argsz=argsz, flags=inf.vfio_flags, num_regions=inf.num_regions,
                                           num_irqs=inf.num_irqs,
                                           cap_offset=_DEVICE_INFO_SIZE if inf.caps and fits else 0))
        # the kernel copies min(argsz, sizeof(info)) bytes of the header
        head = head[:min(argsz, _DEVICE_INFO_SIZE)]
        return self._info_answer(head, inf.caps, argsz, _DEVICE_INFO_SIZE)

    def get_region_info(self, index: int, argsz: int) -> bytes:
        what = f"VFIO_DEVICE_GET_REGION_INFO index {index}"
        self._live(what)
        if argsz < _REGION_INFO_SIZE:
            raise self._err(errno.EINVAL, f"{what} argsz {argsz}")
        r = self._regions.get(index)
        if r is None:
            raise self._err(errno.EINVAL, what)
        caps = r.info.caps if r.info is not None else b""
        fits = not caps or argsz >= _REGION_INFO_SIZE + len(caps)
        head = bytes(uapi.vfio_region_info(argsz=argsz, flags=r.vfio_flags, index=index,
                                           cap_offset=_REGION_INFO_SIZE if caps and fits else 0,
                                           size=r.size, offset=r.offset))
        return self._info_answer(head, caps, argsz, _REGION_INFO_SIZE)

    def get_irq_info(self, index: int) -> bytes:
        what = f"VFIO_DEVICE_GET_IRQ_INFO index {index}"
        self._live(what)
        irq = self._irqs.get(index)
        if irq is None:
            raise self._err(errno.EINVAL, what)
        return bytes(uapi.vfio_irq_info(argsz=_IRQ_INFO_SIZE, flags=irq.flags, index=index, count=irq.count))

    # ---- regions ---------------------------------------------------------------
    def _locate(self, offset: int, what: str) -> tuple[Region, int]:
        """The region an fd offset falls in and the offset inside it.  vfio-pci
        dispatches on ``offset >> 40`` alone, so there the position may lie past
        the region's end and the region's own handler decides the errno."""
        if self._is_pci:
            r = self._regions.get(offset >> uapi.VFIO_PCI_OFFSET_SHIFT)
            if r is not None and r.offset == offset & ~_PCI_OFFSET_MASK:
                return r, offset & _PCI_OFFSET_MASK
        for start, end, r in self._by_offset:
            if start <= offset < end:
                return r, offset - start
        raise self._err(errno.EINVAL, f"{what}: offset {offset:#x} is in no region")

    def _is_config(self, r: Region) -> bool:
        return r.is_config_space or (self._is_pci and r.index == uapi.VFIO_PCI_CONFIG_REGION_INDEX)

    def _is_rom(self, r: Region) -> bool:
        bar = r.bar
        return bool(r.flags & REGION_ROM) or (bar is not None and bar.bar_type == BAR_ROM) or \
            (self._is_pci and r.index == uapi.VFIO_PCI_ROM_REGION_INDEX)

    def _memfd(self, r: Region) -> int:
        fd = self._memfds.get(r.index)
        if fd is None:
            fd = os.memfd_create(f"vfio-replay-{self.name}-region{r.index}", os.MFD_CLOEXEC)
            try:
                self._fill(fd, r)
            except BaseException:
                os.close(fd)
                raise
            self._memfds[r.index] = fd
        return fd

    @staticmethod
    def _fill(fd: int, r: Region) -> None:
        """(Re)load a region's captured contents; the size is page-aligned so it can be mmap'ed."""
        os.ftruncate(fd, 0)                 # drops old contents; existing mappings stay valid
        os.ftruncate(fd, _page_align(r.size))
        for d in r.data:
            view = memoryview(d.data)
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], d.offset + done)

    def _access(self, offset: int, length: int, write: bool) -> tuple[Region, int, int]:
        op = "pwrite" if write else "pread"
        what = f"{op} {length} bytes at {offset:#x}"
        self._live(what)
        r, pos = self._locate(offset, what)
        need = uapi.VFIO_REGION_INFO_FLAG_WRITE if write else uapi.VFIO_REGION_INFO_FLAG_READ
        if not r.vfio_flags & need or (write and self._is_rom(r)):
            raise self._err(errno.EINVAL, f"{what}: region {r.index} is not {'writable' if write else 'readable'}")
        if pos + length > r.size:
            if pos >= r.size and not self._is_config(r):
                raise self._err(errno.EINVAL, f"{what}: past the end of region {r.index} ({r.size:#x} bytes)")
            if self._is_config(r):
                raise self._err(errno.EFAULT, f"{what}: past the end of config space ({r.size:#x} bytes)")
            # the kernel does a short access; KernelBackend reports that as EIO
            raise self._err(errno.EIO, f"{what}: short {op}, region {r.index} ends at {r.size:#x}")
        return r, pos, self._memfd(r)

    def pread(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        r, pos, fd = self._access(offset, length, False)
        return os.pread(fd, length, pos)

    def pwrite(self, offset: int, data: bytes) -> int:
        if len(data) == 0:
            return 0
        r, pos, fd = self._access(offset, len(data), True)
        if self._is_config(r):
            data = self._config_write(r, fd, pos, data)
        os.pwrite(fd, data, pos)
        return len(data)

    def mmap(self, offset: int, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> mmap.mmap:
        what = f"mmap {length:#x} bytes at {offset:#x}"
        self._live(what)
        r, pos = self._locate(offset, what)
        if not r.vfio_flags & uapi.VFIO_REGION_INFO_FLAG_MMAP:
            raise self._err(errno.EINVAL, f"{what}: region {r.index} is not mmap-able")
        if pos % PAGE_SIZE or length <= 0 or pos + length > _page_align(r.size):
            raise self._err(errno.EINVAL, f"{what}: outside region {r.index} or unaligned")
        areas = self._sparse_areas(r)
        if areas is not None and not any(a <= pos and pos + length <= a + n for a, n in areas):
            raise self._err(errno.EINVAL, f"{what}: not inside a sparse-mmap area of region {r.index}")
        return memory.map_fd(self._memfd(r), length, pos, prot, f"{what} (region {r.index}) on {self.name}")

    def _sparse_areas(self, r: Region):
        """The region's sparse-mmap areas, or None when it has no such capability."""
        if r.info is None or not r.info.caps:
            return None
        from ..device import SparseMmapCap, parse_region_info   # the one decoder of region caps
        buf = self.get_region_info(r.index, _REGION_INFO_SIZE + len(r.info.caps))
        what = f"region {r.index} of {self.name}"
        try:
            cap = parse_region_info(buf, what).cap(SparseMmapCap)
        except ValueError as e:
            raise self._err(errno.EPROTO, f"{what}: captured capability chain: {e}") from None
        return None if cap is None else list(cap.areas)

    # ---- config-space write policy ----------------------------------------------
    def _config_policy(self, r: Region, fd: int) -> VirtualConfigSpace:
        """The writability vfio-pci gives a user (:meth:`VirtualConfigSpace.vfio_pci_user`) over the
        captured config space, BARs sized from their regions, the ROM from the ROM region."""
        if self._cfg_space is None:
            cfg = os.pread(fd, r.size, 0)
            sizes = {i: reg.size for i in range(pci_regs.STD_NUM_BARS)
                     if (reg := self._regions.get(i)) is not None and reg.size}
            rom = self._regions.get(uapi.VFIO_PCI_ROM_REGION_INDEX)
            what = f"captured config space of region {r.index}"
            try:
                # the kernel's region of the upper half of a 64-bit BAR is empty; a record may say otherwise
                starts = {b.index for b in ConfigSpace(cfg, bar_sizes=sizes, source=what).bars}
                self._cfg_space = VirtualConfigSpace.vfio_pci_user(
                    cfg, bars={i: n for i, n in sizes.items() if i in starts},
                    rom_size=rom.size if rom is not None else 0, source=what)
            except ValueError as e:
                raise self._err(errno.EIO, f"config write: {e}") from None
        return self._cfg_space

    def _config_write(self, r: Region, fd: int, pos: int, data: bytes) -> bytes:
        """What ``data`` written at ``pos`` leaves in config space: split into naturally aligned
        accesses of at most 4 bytes as vfio_config_do_rw does, each through the policy's masks
        (read-only bits kept, write-1-to-clear bits cleared, BAR sizing)."""
        policy = self._config_policy(r, fd)
        out = bytearray(os.pread(fd, len(data), pos))
        done = 0
        while done < len(data):
            at, left = pos + done, len(data) - done
            n = 4 if left >= 4 and at % 4 == 0 else 2 if left >= 2 and at % 2 == 0 else 1
            policy.poke(at, n, int.from_bytes(out[done:done + n], "little"))
            policy.write(at, n, int.from_bytes(data[done:done + n], "little"))
            out[done:done + n] = policy.peek(at, n).to_bytes(n, "little")
            done += n
        return bytes(out)

    # ---- interrupts ------------------------------------------------------------
    def set_irqs(self, irq_set: bytes) -> None:
        self._live("VFIO_DEVICE_SET_IRQS")
        if len(irq_set) < _IRQ_SET_MINSZ:
            raise self._err(errno.EFAULT, f"VFIO_DEVICE_SET_IRQS: {len(irq_set)}-byte buffer")
        h = uapi.vfio_irq_set.from_buffer_copy(irq_set)
        what = f"VFIO_DEVICE_SET_IRQS index {h.index} start {h.start} count {h.count} flags {h.flags:#x}"
        bad = lambda why, err=errno.EINVAL: self._err(err, f"{what}: {why}")  # noqa: E731
        # vfio_set_irqs_validate_and_prepare()
        irq = self._irqs.get(h.index)
        nvec = irq.count if irq is not None else 0
        if h.argsz < _IRQ_SET_MINSZ or h.index >= self._info.num_irqs or h.count >= _U32_MAX - h.start \
                or h.flags & ~(uapi.VFIO_IRQ_SET_DATA_TYPE_MASK | uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK):
            raise bad("bad argsz, index or flags")
        if h.start >= nvec or h.start + h.count > nvec:
            raise bad(f"vectors outside the index's {nvec}")
        dtype = h.flags & uapi.VFIO_IRQ_SET_DATA_TYPE_MASK
        if dtype not in _DATA_SIZE:
            raise bad("not exactly one DATA type")
        dsize = _DATA_SIZE[dtype] * h.count
        if h.argsz - _IRQ_SET_MINSZ < dsize:
            raise bad(f"argsz {h.argsz} does not cover {dsize} bytes of data")
        if len(irq_set) < _IRQ_SET_MINSZ + dsize:
            raise bad("buffer shorter than its argsz", errno.EFAULT)
        raw = bytes(irq_set[_IRQ_SET_MINSZ:_IRQ_SET_MINSZ + dsize])
        data = (struct.unpack(f"<{h.count}i", raw) if dtype == uapi.VFIO_IRQ_SET_DATA_EVENTFD
                else tuple(raw) if dtype == uapi.VFIO_IRQ_SET_DATA_BOOL else ())
        # vfio_pci_set_irqs_ioctl(): which actions the index supports
        action = h.flags & uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK
        if action not in _ACTIONS:
            raise bad("not exactly one ACTION type", errno.ENOTTY)
        if action != uapi.VFIO_IRQ_SET_ACTION_TRIGGER:
            self._mask_action(irq, action, dtype, h, data, bad)
        else:
            self._trigger_action(irq, dtype, h, data, bad)
        self.irq_log.append(IrqSetCall(h.index, h.flags, h.start, h.count, data))

    def _mask_action(self, irq: _Irq, action: int, dtype: int, h, data, bad) -> None:
        if not irq.flags & uapi.VFIO_IRQ_INFO_MASKABLE:
            # vfio-pci has no mask op for the index (ENOTTY); vfio-platform's refuses an
            # edge-triggered line (EINVAL, vfio_platform_set_irq_mask/unmask)
            raise bad("index is not maskable", errno.ENOTTY if self._is_pci else errno.EINVAL)
        if h.start != 0 or h.count != 1 or (self._is_pci and not irq.enabled):
            raise bad("mask/unmask needs start 0, count 1 and an enabled index")
        unmask = action == uapi.VFIO_IRQ_SET_ACTION_UNMASK
        if dtype == uapi.VFIO_IRQ_SET_DATA_EVENTFD and not unmask and not self._is_pci:
            # vfio_platform_set_irq_mask: a signal on the eventfd masks the line (fd -1: stop)
            old, irq.mask_fd = irq.mask_fd, self._dup(data[0], bad) if data[0] >= 0 else -1
            if old >= 0:
                os.close(old)
            return
        if dtype == uapi.VFIO_IRQ_SET_DATA_EVENTFD:
            if not unmask:
                raise bad("masking through an eventfd is not implemented (as in vfio-pci)", errno.ENOTTY)
            old, irq.unmask_fd = irq.unmask_fd, self._dup(data[0], bad) if data[0] >= 0 else -1
            if old >= 0:
                os.close(old)
            return
        if dtype == uapi.VFIO_IRQ_SET_DATA_BOOL and not data[0]:
            return
        if unmask:
            self._unmask(irq, 0)
        else:
            irq.masked[0] = True

    def _trigger_action(self, irq: _Irq, dtype: int, h, data, bad) -> None:
        if dtype == uapi.VFIO_IRQ_SET_DATA_NONE and h.count == 0:           # disable the index
            if self._is_pci and not irq.enabled:
                raise bad("index is not enabled")
            irq.close()
            irq.masked = [False] * irq.count
            irq.pending = [False] * irq.count
            return
        if dtype == uapi.VFIO_IRQ_SET_DATA_EVENTFD:
            if self._is_pci and h.index in (_PCI_INTX, _PCI_MSI, _PCI_MSIX):
                other = [i for i in (_PCI_INTX, _PCI_MSI, _PCI_MSIX)
                         if i != h.index and i in self._irqs and self._irqs[i].enabled]
                if other:
                    raise bad(f"IRQ index {other[0]} is enabled (vfio-pci allows one of INTx/MSI/MSI-X)")
                if h.index == _PCI_INTX and (h.start != 0 or h.count != 1):
                    raise bad("INTx takes start 0, count 1")
            fds = [self._dup(fd, bad) if fd >= 0 else -1 for fd in data]
            for v, fd in enumerate(fds, h.start):
                if irq.triggers[v] >= 0:
                    os.close(irq.triggers[v])
                irq.triggers[v] = fd
            return
        # DATA_NONE / DATA_BOOL with vectors: loopback trigger of those vectors
        for i in range(h.count):
            if dtype == uapi.VFIO_IRQ_SET_DATA_NONE or data[i]:
                fd = irq.triggers[h.start + i]
                if fd >= 0:
                    os.eventfd_write(fd, 1)

    @staticmethod
    def _dup(fd: int, bad) -> int:
        try:
            return os.dup(fd)
        except OSError:
            raise bad(f"fd {fd} is not open", errno.EBADF) from None

    def _poll_unmask(self, irq: _Irq) -> None:
        """The kernel unmasks when the unmask eventfd is signalled (and, for vfio-platform,
        masks when the mask eventfd is); replay looks when asked."""
        if irq.mask_fd >= 0:
            try:
                if os.eventfd_read(irq.mask_fd):
                    irq.masked[0] = True
            except BlockingIOError:
                pass
        if irq.unmask_fd >= 0:
            try:
                if os.eventfd_read(irq.unmask_fd):
                    self._unmask(irq, 0)
            except BlockingIOError:
                pass

    def _unmask(self, irq: _Irq, v: int) -> None:
        irq.masked[v] = False
        if irq.pending[v]:           # a level interrupt still asserted fires again at unmask
            irq.pending[v] = False
            self._deliver(irq, v)

    def _deliver(self, irq: _Irq, v: int) -> bool:
        if irq.masked[v]:
            irq.pending[v] = True
            return False
        if irq.triggers[v] < 0:
            return False
        os.eventfd_write(irq.triggers[v], 1)
        if irq.flags & uapi.VFIO_IRQ_INFO_AUTOMASKED:
            irq.masked[v] = True
        return True

    def fire(self, index: int, vector: int = 0) -> bool:
        """Play the device raising ``vector`` of IRQ ``index``.  Returns True if a
        trigger eventfd was signalled; False if the vector is masked (the
        interrupt stays pending until unmasked) or has no eventfd (lost, as
        with real hardware)."""
        irq = self._irqs.get(index)
        if irq is None or not 0 <= vector < irq.count:
            raise InvalidValue(f"{self.name}: no IRQ vector {index}.{vector} in the record")
        self._live("fire")
        self._poll_unmask(irq)
        return self._deliver(irq, vector)

    def irq_state(self, index: int) -> IrqState:
        """What is programmed for IRQ ``index`` now."""
        irq = self._irqs.get(index)
        if irq is None:
            raise InvalidValue(f"{self.name}: no IRQ index {index} in the record")
        self._poll_unmask(irq)
        return IrqState(index, [fd >= 0 for fd in irq.triggers], list(irq.masked), list(irq.pending),
                        irq.unmask_fd >= 0)

    # ---- reset ---------------------------------------------------------------
    def reset(self) -> None:
        self._live("VFIO_DEVICE_RESET")
        if not self._info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_RESET:
            raise self._err(errno.EINVAL, "VFIO_DEVICE_RESET: the device has no reset")
        for index, fd in self._memfds.items():
            self._fill(fd, self._regions[index])
        for irq in self._irqs.values():
            irq.masked = [False] * irq.count
            irq.pending = [False] * irq.count
        self.reset_count += 1

    # ---- lifetime ------------------------------------------------------------
    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for irq in self._irqs.values():
            irq.close()
        for fd in self._memfds.values():
            os.close(fd)
        self._memfds.clear()
        if self._mapped is not None:
            self._mapped.close()
            self._mapped = None


def open_replay(source, *, name: str | None = None):
    """A :class:`vfio.device.Device` over a :class:`ReplayBackend` (closed with the device)."""
    from ..device import Device, Interface
    from ..platform import DtOrigins
    backend = ReplayBackend(source, name=name)
    try:
        # a platform device's capture names each region's and IRQ's device-tree origin
        return Device(backend, interface=Interface.REPLAY, dt=DtOrigins.from_record(backend.record))
    except BaseException:
        backend.close()
        raise
