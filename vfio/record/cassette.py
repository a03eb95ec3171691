"""Device cassettes: record a program's session with a device, replay the device's behaviour.

A record file (:mod:`vfio.record.replay`) describes a device's layout and
serves its BARs as memory: the first register with a side effect diverges
from the device.  A *cassette* is a record file that also holds a session, in
order (``records/FORMAT.md``, "Cassettes"): every register access the program
made through the backend seam (region index, offset, width, value; config
space included), every ``VFIO_DEVICE_SET_IRQS``, reset, DMA mapping and
marker, and what the device did: each interrupt delivered (index, vector, and
how many accesses the program had made by then) and the bytes it wrote into
DMA memory, seen at synchronisation points (after a register read, before an
interrupt is passed on) as compact diffs.  Like mmiotrace it records MMIO; like
VCR.py's cassettes it is recorded once against the real thing and replayed in
CI; unlike both it records a userspace driver's interrupts and DMA, and it
replays through the same :class:`vfio.device.Device` API the driver uses.

Recording (:func:`recording`, the ``VFIO_RECORD`` environment variable read by
:func:`vfio.open_pci_device`, or the ``vfio-record`` command, which sets it
for an unmodified program): the opened device is served by a
:class:`RecordingBackend` over the real one.  It sees every access, because a
recording backend *traps* MMIO (``traps_mmio``): :meth:`Region.map
<vfio.device.Region.map>` still succeeds, but the view's accessors go through
``pread``/``pwrite`` instead of a mapping (a 4-byte MMIO read costs a syscall
instead of a load: bench/bench_cassette.py).  Interrupts are relayed: the
kernel signals an eventfd of the recorder, whose thread notes the interrupt
(after diffing DMA memory) and signals the program's eventfd.  DMA mappings go
through a :class:`RecordingDmaSpace` over the device's DMA space, which keeps a
copy of each device-writable mapping to diff against.  The diff sees every
change since the last synchronisation point, the program's own writes to DMA
memory included (nothing tells them apart without trapping memory); replay
writes them again at the same point, where the program has already written
the same bytes.

Replay (:func:`open_cassette`, or a cassette's path given to
:func:`vfio.open_pci_device` / ``PassthroughDevice.open`` instead of an
address): a :class:`CassetteBackend` answers reads with the recorded values,
compares writes (value and width) and every SET_IRQS, reset, DMA mapping and
marker with the recording, signals the program's eventfds where the device
interrupted, and writes the device's DMA bytes into the program's memory where
the device wrote them.  IOVAs are reproduced: a mapping the program lets the
allocator place gets the recorded IOVA.  :class:`Match` picks the matching:
``STRICT`` (the default: the session must happen in the recorded order) or
``PER_REGISTER`` (reads of a register return its recorded values in order,
writes to it are compared in order, whatever the interleaving between
registers).  The first divergence raises :class:`CassetteMismatch` naming the
access number, the register, what was expected and what came, and the last
accesses before it; :meth:`CassetteBackend.finish` raises it for accesses the
program never made.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import enum
import errno
import mmap
import os
import selectors
import sys
import threading

from .. import uapi
from ..backend import DeviceBackend
from ..dma import DmaSpace
from ..errors import Error, InvalidValue, VfioError
from ..model import SoftIommu
from . import format as F
from .replay import ReplayBackend

__all__ = ["Match", "CassetteMismatch", "RecordingBackend", "RecordingDmaSpace", "CassetteBackend",
           "CassetteIommu", "record_device", "recording", "open_cassette", "is_cassette_path", "marker",
           "RECORD_ENV"]

#: Environment variable naming the cassette :func:`vfio.open_pci_device` records to.
RECORD_ENV = "VFIO_RECORD"
#: How many accesses before a divergence its error shows.
HISTORY = 6
#: Granule of DMA diffs: a changed byte sends its 16-byte granule (runs of them merged).
DIFF_GRANULE = 16

_WIDTH_NAMES = {1: "8", 2: "16", 4: "32", 8: "64"}


class Match(str, enum.Enum):
    """How replay matches the program's accesses with the recording."""
    STRICT = "strict"                   # one order: the recorded one
    PER_REGISTER = "per-register"       # each register's accesses in order, any interleaving

    def __str__(self) -> str:
        return self.value


class CassetteMismatch(Error, AssertionError):
    """The program diverged from the cassette: ``number`` is the access (or event)
    number, ``expected`` and ``actual`` describe both sides, ``recent`` the last
    accesses before it (text, one per item)."""

    def __init__(self, cassette: str, number: int, expected: str, actual: str, recent: list[str]):
        self.cassette, self.number, self.expected, self.actual, self.recent = \
            cassette, number, expected, actual, list(recent)
        tail = "".join(f"\n    {r}" for r in recent) if recent else " (none)"
        super().__init__(f"{cassette}: access #{number} diverges from the recording: expected {expected}, "
                         f"got {actual}; the accesses before it:{tail}")


# ---------------------------------------------------------------------------------------
# names: what the trace printer and the errors call a register
# ---------------------------------------------------------------------------------------
_CONFIG_NAMES = {0x00: "VENDOR_ID", 0x02: "DEVICE_ID", 0x04: "COMMAND", 0x06: "STATUS", 0x08: "REVISION",
                 0x0C: "CACHE_LINE", 0x0E: "HEADER_TYPE", 0x10: "BAR0", 0x14: "BAR1", 0x18: "BAR2",
                 0x1C: "BAR3", 0x20: "BAR4", 0x24: "BAR5", 0x2C: "SUBSYSTEM_VENDOR", 0x2E: "SUBSYSTEM_ID",
                 0x30: "ROM", 0x34: "CAP_PTR", 0x3C: "INTERRUPT_LINE", 0x3D: "INTERRUPT_PIN"}
#: BAR0 register names of devices the trace knows, by (vendor, device)
DEVICE_REGISTERS = {
    (0x1234, 0x11E8): {0x00: "ID", 0x04: "LIVENESS", 0x08: "FACTORIAL", 0x20: "STATUS", 0x24: "IRQ_STATUS",
                       0x60: "IRQ_RAISE", 0x64: "IRQ_ACK", 0x80: "DMA_SRC", 0x88: "DMA_DST", 0x90: "DMA_COUNT",
                       0x98: "DMA_CMD"},                                        # QEMU edu
    (0x1B36, 0x0010): {0x00: "CAP", 0x08: "VS", 0x0C: "INTMS", 0x10: "INTMC", 0x14: "CC", 0x1C: "CSTS",
                       0x20: "NSSR", 0x24: "AQA", 0x28: "ASQ", 0x30: "ACQ", 0x1000: "SQ0TDBL",
                       0x1004: "CQ0HDBL"},                                      # QEMU nvme (NVMe 1.4)
}


class RegisterNames:
    """Names of a device's registers for traces and errors: config space by the PCI
    header, BAR0 by :data:`DEVICE_REGISTERS` for the device's IDs."""

    def __init__(self, rec: F.DeviceRecord):
        self.bar0: dict = {}
        self.config_index = uapi.VFIO_PCI_CONFIG_REGION_INDEX
        cfg = rec.config_region
        if cfg is not None:
            self.config_index = cfg.index
            ids = cfg.contents(0, 4)
            self.bar0 = DEVICE_REGISTERS.get((int.from_bytes(ids[:2], "little"),
                                              int.from_bytes(ids[2:], "little")), {})

    def region(self, index: int) -> str:
        if index == self.config_index:
            return "config"
        return f"BAR{index}" if index < uapi.VFIO_PCI_ROM_REGION_INDEX else f"region{index}"

    def register(self, index: int, offset: int) -> str:
        name = _CONFIG_NAMES.get(offset) if index == self.config_index else \
            self.bar0.get(offset) if index == 0 else None
        where = f"{self.region(index)}+{offset:#x}"
        return f"{where} ({name})" if name else where


def describe_access(names: RegisterNames, write: bool, index: int, offset: int, width: int, value) -> str:
    """``write32 BAR0+0x4 (LIVENESS) = 0x12345678``; a bulk access shows its length and first bytes."""
    op = "write" if write else "read"
    if width not in _WIDTH_NAMES:
        shown = "" if value is None else " = " + bytes(value[:16]).hex() + ("..." if len(value) > 16 else "")
        return f"{op} {width} bytes at {names.register(index, offset)}{shown}"
    shown = "" if value is None else f" = {value:#0{2 + 2 * width}x}"
    return f"{op}{_WIDTH_NAMES[width]} {names.register(index, offset)}{shown}"


# ---------------------------------------------------------------------------------------
# recording
# ---------------------------------------------------------------------------------------
def _view(vaddr: int, size: int) -> memoryview:
    """The bytes of user memory at ``vaddr`` (a DMA buffer the recorder diffs)."""
    return memoryview((ctypes.c_char * size).from_address(vaddr)).cast("B")


def diff_runs(old: bytes, new: bytes, granule: int = DIFF_GRANULE) -> list[tuple[int, int]]:
    """``(start, end)`` runs of ``granule``-byte pieces that differ, adjacent ones merged."""
    out: list[list[int]] = []
    n = len(new)
    for start in range(0, n, granule):
        end = min(start + granule, n)
        if old[start:end] != new[start:end]:
            if out and out[-1][1] == start:
                out[-1][1] = end
            else:
                out.append([start, end])
    return [(a, b) for a, b in out]


class _Recorder:
    """The session being recorded: the event list, the access count, the DMA copies.
    Every append holds ``lock`` (the interrupt relay thread appends too)."""

    def __init__(self, path: str, layout: F.DeviceRecord, text: str):
        self.path = path
        self.layout = layout
        self.text = text
        self.lock = threading.Lock()
        self.events: list = []
        self.batch: list = []           # the open ACCESSES run
        self.count = 0
        self.watched: dict[int, list] = {}     # iova -> [size, view, copy]

    def _flush(self) -> None:
        if self.batch:
            make = F.Access._make       # plain tuples on the hot path, the model's type here
            self.events.append(F.Accesses([make(t) for t in self.batch]))
            self.batch = []

    def access(self, write: bool, index: int, offset: int, data: bytes) -> None:
        n = len(data)
        with self.lock:
            if n in _WIDTH_NAMES:
                self.batch.append((F.ACCESS_WRITE if write else F.ACCESS_READ, n, index, offset,
                                   int.from_bytes(data, "little")))
            else:
                self._flush()
                self.events.append(F.AccessData(index, offset, bytes(data), F.ACCESS_DATA_WRITE if write else 0))
            self.count += 1
            if not write and self.watched:
                self._diff()            # a read is a synchronisation point

    def event(self, make) -> None:
        """Append ``make(at)`` after a DMA diff (the device's writes come before what follows them)."""
        with self.lock:
            self._diff()
            self._flush()
            self.events.append(make(self.count))

    def _diff(self) -> None:
        for iova, w in self.watched.items():
            size, view, old = w
            new = bytes(view)
            if new != old:
                self._flush()
                for a, b in diff_runs(old, new):
                    self.events.append(F.DmaWrite(self.count, iova + a, new[a:b]))
                w[2] = new

    def watch(self, iova: int, size: int, vaddr: int) -> None:
        with self.lock:
            view = _view(vaddr, size)
            self.watched[iova] = [size, view, bytes(view)]

    def unwatch(self, iova: int) -> None:
        with self.lock:
            w = self.watched.pop(iova, None)
            if w is not None:
                w[1].release()

    def save(self) -> None:
        with self.lock:
            self._diff()
            self._flush()
            for w in self.watched.values():
                w[1].release()
            self.watched.clear()
            recs = [r for r in self.layout.records] + [F.Cassette(self.text)] + self.events
        F.save(F.DeviceRecord(recs, version_minor=F.CASSETTE_MINOR), self.path)


class _IrqRelay:
    """Interrupts seen by the recorder first: the kernel signals the recorder's eventfd,
    this thread notes the interrupt and signals the program's (a dup of it)."""

    def __init__(self, rec: _Recorder, name: str):
        self.rec = rec
        self.sel = selectors.DefaultSelector()
        self.wake = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.sel.register(self.wake, selectors.EVENT_READ)
        self.routes: dict[tuple[int, int], tuple[int, int]] = {}     # (index, vector) -> (own fd, program dup)
        # held while routes change and while an interrupt is passed on, so the thread never
        # reads or signals an fd number the program's thread has just closed (and reused)
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, name=f"vfio-record irq {name}", daemon=True)
        self.thread.start()

    def route(self, index: int, vector: int, program_fd: int) -> int:
        """The fd to give the kernel for ``program_fd`` (or -1 for none)."""
        with self.lock:
            self._drop(index, vector)
            if program_fd < 0:
                return -1
            own = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            try:
                dup = os.dup(program_fd)
            except OSError:
                os.close(own)
                raise
            self.routes[(index, vector)] = (own, dup)
            self.sel.register(own, selectors.EVENT_READ, (index, vector, dup))
        os.eventfd_write(self.wake, 1)
        return own

    def drop(self, index: int, vector: int | None = None) -> None:
        with self.lock:
            self._drop(index, vector)

    def _drop(self, index: int, vector: int | None) -> None:
        for key in [k for k in self.routes if k[0] == index and (vector is None or k[1] == vector)]:
            own, dup = self.routes.pop(key)
            self.sel.unregister(own)
            os.close(own)
            os.close(dup)

    def _run(self) -> None:
        while not self.stopping:
            for key, _ in self.sel.select(0.5):
                if key.data is None:
                    with contextlib.suppress(BlockingIOError):
                        os.eventfd_read(self.wake)
                    continue
                index, vector, dup = key.data
                with self.lock:
                    if self.routes.get((index, vector)) != (key.fd, dup):
                        continue                # re-routed or dropped since select() saw it
                    try:
                        os.eventfd_read(key.fd)
                    except BlockingIOError:
                        continue
                    self.rec.event(lambda at: F.IrqEvent(index, at, vector))
                    os.eventfd_write(dup, 1)

    def close(self) -> None:
        self.stopping = True
        os.eventfd_write(self.wake, 1)
        self.thread.join(5)
        with self.lock:
            for key in list(self.routes):
                self._drop(*key)
        self.sel.close()
        os.close(self.wake)


def _normalized_irq_data(h, raw: bytes) -> bytes:
    """SET_IRQS data as a cassette keeps it: eventfd numbers become 0 (an fd) or -1 (none)."""
    if h.flags & uapi.VFIO_IRQ_SET_DATA_EVENTFD:
        fds = memoryview(bytes(raw[:4 * h.count])).cast("i")
        return b"".join((0 if fd >= 0 else -1).to_bytes(4, "little", signed=True) for fd in fds)
    if h.flags & uapi.VFIO_IRQ_SET_DATA_BOOL:
        return bytes(raw[:h.count])
    return b""


class RecordingBackend(DeviceBackend):
    """A device backend that records every interaction with the backend it wraps (see the
    module docstring).  Owns the wrapped :class:`~vfio.device.Device` and the recording
    DMA space; closing it writes the cassette."""

    traps_mmio = True

    def __init__(self, inner, rec: _Recorder, dma: "RecordingDmaSpace | None"):
        self.inner = inner
        self._be = inner.backend
        self.name = inner.name
        self.rec = rec
        self.dma = dma
        self._regions = sorted((r.offset, r.offset + r.size, r.index)
                               for r in rec.layout.regions.values() if r.size)
        self._last = (0, 0, 0)          # the region of the last access: most accesses hit it again
        self._relay = _IrqRelay(rec, inner.name)
        self._closed = False

    def _region_of(self, offset: int) -> tuple[int, int, int]:
        """(start, end, index) of the region holding fd offset ``offset``."""
        for r in self._regions:
            if r[0] <= offset < r[1]:
                self._last = r
                return r
        raise VfioError(errno.EINVAL, f"access at {offset:#x} on {self.name}: in no region")

    # ---- info: not part of the session (the cassette's layout answers them) --------------
    def get_info(self, argsz: int) -> bytes:
        return self._be.get_info(argsz)

    def get_region_info(self, index: int, argsz: int) -> bytes:
        return self._be.get_region_info(index, argsz)

    def get_irq_info(self, index: int) -> bytes:
        return self._be.get_irq_info(index)

    def get_pci_hot_reset_info(self, argsz: int) -> bytes:
        return self._be.get_pci_hot_reset_info(argsz)

    def feature(self, buf: bytes) -> bytes:
        return self._be.feature(buf)

    # ---- the session ---------------------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        data = self._be.pread(offset, length)
        if length:
            r = self._last
            if not r[0] <= offset < r[1]:
                r = self._region_of(offset)
            self.rec.access(False, r[2], offset - r[0], data)
        return data

    def pwrite(self, offset: int, data: bytes) -> int:
        if data:
            r = self._last
            if not r[0] <= offset < r[1]:
                r = self._region_of(offset)
            self.rec.access(True, r[2], offset - r[0], bytes(data))
        return self._be.pwrite(offset, data)

    def set_irqs(self, irq_set: bytes) -> None:
        h = uapi.vfio_irq_set.from_buffer_copy(irq_set)
        fixed = ctypes.sizeof(uapi.vfio_irq_set)
        raw = bytes(irq_set[fixed:])
        action = h.flags & uapi.VFIO_IRQ_SET_ACTION_TYPE_MASK
        out = irq_set
        if action == uapi.VFIO_IRQ_SET_ACTION_TRIGGER and h.flags & uapi.VFIO_IRQ_SET_DATA_EVENTFD:
            fds = list(memoryview(raw[:4 * h.count]).cast("i"))
            mine = [self._relay.route(h.index, h.start + i, fd) for i, fd in enumerate(fds)]
            out = bytes(irq_set[:fixed]) + uapi.irq_set_data_eventfds(mine) + raw[4 * h.count:]
        elif action == uapi.VFIO_IRQ_SET_ACTION_TRIGGER and h.flags & uapi.VFIO_IRQ_SET_DATA_NONE and not h.count:
            self._relay.drop(h.index)
        self.rec.event(lambda at: F.IrqSet(h.index, at, h.start, h.count, h.flags, _normalized_irq_data(h, raw)))
        self._be.set_irqs(out)

    def reset(self) -> None:
        self.rec.event(lambda at: F.ResetEvent(F.RESET_DEVICE, at))
        self._be.reset()

    def pci_hot_reset(self, hot_reset: bytes) -> None:
        self.rec.event(lambda at: F.ResetEvent(F.RESET_HOT, at))
        self._be.pci_hot_reset(hot_reset)

    def marker(self, text: str) -> None:
        """Insert a marker (mmiotrace's ``trace_marker``) into the session."""
        self.rec.event(lambda at: F.Marker(at, text))

    def mmap(self, offset: int, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> mmap.mmap:
        raise VfioError(errno.EINVAL, f"mmap {length:#x} bytes at {offset:#x} on {self.name}: a recorded device "
                        f"traps every access (no direct mapping while recording)")

    def fileno(self) -> int:
        return self._be.fileno()

    def save_at_exit(self) -> None:
        """Registered with :mod:`atexit`: a program that ends without closing the device
        (an uncaught exception outside a ``with``) still leaves its cassette, up to there."""
        if not self._closed:
            self.rec.save()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        atexit.unregister(self.save_at_exit)
        try:
            if self.dma is not None:
                self.dma.close()
        finally:
            try:
                self._relay.close()
            finally:
                try:
                    self.inner.close()
                finally:
                    self.rec.save()


class RecordingDmaSpace(DmaSpace):
    """The device's DMA space, with each mapping recorded and its memory watched for the
    device's writes.  Maps and unmaps through the wrapped space's primitives."""

    def __init__(self, inner: DmaSpace, rec: _Recorder):
        super().__init__()
        self.inner = inner
        self.rec = rec

    def iova_ranges(self) -> list:
        return self.inner.iova_ranges()

    @property
    def min_page_size(self) -> int:
        return self.inner.min_page_size

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        self.inner._map(vaddr, iova, size, readable, writable)
        flags = (F.DMA_READ if readable else 0) | (F.DMA_WRITE_OK if writable else 0)
        self.rec.event(lambda at: F.DmaMap(at, iova, size, flags))
        if writable:
            self.rec.watch(iova, size, vaddr)

    def _unmap(self, iova: int, size: int) -> int:
        self.rec.event(lambda at: F.DmaUnmap(at, iova, size))
        self.rec.unwatch(iova)
        return self.inner._unmap(iova, size)

    def close(self) -> None:
        self.unmap_all()


def _command_line() -> str:
    argv = list(sys.argv) or ["?"]
    return " ".join([os.path.basename(argv[0])] + argv[1:])


def record_device(dev, path, *, text: str | None = None):
    """A :class:`~vfio.device.Device` recording ``dev`` (which it owns from now on) to the
    cassette ``path``, written when the returned device is closed.  ``text`` describes
    the session (default: the program's command line).  Raises what opening a device
    raises; ``dev`` is closed on failure."""
    from ..device import Device
    from .capture import capture_device
    try:
        layout = capture_device(dev)
        rec = _Recorder(os.fspath(path), layout, _command_line() if text is None else text)
        space = RecordingDmaSpace(dev.dma, rec) if dev.dma is not None else None
        backend = RecordingBackend(dev, rec, space)
    except BaseException:
        dev.close()
        raise
    atexit.register(backend.save_at_exit)
    try:
        return Device(backend, dma=space, interface=dev.interface, group=dev.group, container=dev.container,
                      ioas=dev.ioas, iommufd=dev.iommufd)
    except BaseException:
        backend.close()
        raise


_recording_to: list[str] = []


def recording_path() -> str | None:
    """Where :func:`vfio.open_pci_device` records the device it opens: the innermost
    :func:`recording` block, else ``$VFIO_RECORD``, else None."""
    if _recording_to:
        return _recording_to[-1]
    return os.environ.get(RECORD_ENV) or None


@contextlib.contextmanager
def recording(path):
    """Record the device :func:`vfio.open_pci_device` opens inside the block to ``path``::

        with vfio.record.cassette.recording("edu-session.vfiorec"):
            with PassthroughDevice.open("0000:00:04.0") as pt:
                ...
    """
    _recording_to.append(os.fspath(path))
    try:
        yield
    finally:
        _recording_to.pop()


def marker(dev, text: str) -> None:
    """Insert a marker into the session of ``dev`` (a Device being recorded or replayed;
    on any other device it does nothing, as writing to mmiotrace's marker file with
    tracing off).  Replay checks that the program reaches its markers in order."""
    backend = dev.backend
    if isinstance(backend, (RecordingBackend, CassetteBackend)):
        backend.marker(text)


# ---------------------------------------------------------------------------------------
# replay
# ---------------------------------------------------------------------------------------
class _Item:
    """One step of the recorded session: ``kind`` is its record class (F.Accesses for one access)."""
    __slots__ = ("kind", "number", "rec", "write", "index", "offset", "width", "value")

    def __init__(self, kind, number, rec=None, write=False, index=0, offset=0, width=0, value=None):
        self.kind, self.number, self.rec = kind, number, rec
        self.write, self.index, self.offset, self.width, self.value = write, index, offset, width, value


_DEVICE_EVENTS = (F.IrqEvent, F.DmaWrite)


def timeline(rec: F.DeviceRecord, path: str | None = None) -> list[_Item]:
    """The session of a cassette as replay walks it.  Raises :class:`RecordFormatError`
    (naming the record's offset) for an event whose ``at`` is not the number of
    accesses before it, or for a file that is not a cassette."""
    if rec.cassette is None:
        raise F.RecordFormatError(None, None, "not a cassette (no CASSETTE record): a device record without a "
                                  "session; open it with vfio.record.replay", path)
    out: list[_Item] = []
    n = 0
    offsets = rec.offsets
    sizes = {r.index: r.size for r in rec.regions.values()}
    irqs = {q.index: q.count for q in rec.interrupts.values()}

    def bad(i: int, r, problem: str) -> F.RecordFormatError:
        off = offsets[i] if i < len(offsets) else None
        return F.RecordFormatError(off, r.type, f"{problem}; replay refuses it", path)

    def check(i: int, r, index: int, offset: int, width: int) -> None:
        if offset + width > sizes.get(index, 0):
            raise bad(i, r, f"access #{n}: {width} bytes at {offset:#x} of region {index}, outside the regions "
                      f"the file describes")
    for i, r in enumerate(rec.records):
        t = type(r)
        if t is F.Accesses:
            for e in r.entries:
                check(i, r, e.index, e.offset, e.width)
                out.append(_Item(F.Accesses, n, None, e.op == F.ACCESS_WRITE, e.index, e.offset, e.width, e.value))
                n += 1
        elif t is F.AccessData:
            check(i, r, r.index, r.offset, len(r.data))
            out.append(_Item(F.Accesses, n, None, r.write, r.index, r.offset, len(r.data), bytes(r.data)))
            n += 1
        elif t in (F.IrqSet, F.IrqEvent, F.ResetEvent, F.DmaMap, F.DmaUnmap, F.DmaWrite, F.Marker):
            if r.at != n:
                raise bad(i, r, f"at {r.at}, but {n} accesses come before it in the file")
            if t is F.IrqEvent and not r.vector < irqs.get(r.index, 0):
                raise bad(i, r, f"interrupt {r.index}.{r.vector}: the file describes no such IRQ vector")
            out.append(_Item(t, n, r))
    return out


class CassetteIommu(SoftIommu):
    """The DMA space of a replayed cassette: a software IOMMU whose mappings are checked
    against the recorded ones and placed at the recorded IOVAs."""

    def __init__(self, backend: "CassetteBackend"):
        super().__init__()
        self._cassette = backend

    def map(self, buffer, iova=None, readable=True, writable=True, limit=None):
        iova = self._cassette._dma_map(buffer.size, iova, readable, writable)
        return super().map(buffer, iova, readable, writable, limit)

    def _unmap(self, iova: int, size: int) -> int:
        n = super()._unmap(iova, size)
        if not self._cassette._closed:
            self._cassette._dma_unmap(iova, size)
        return n


class CassetteBackend(ReplayBackend):
    """A cassette served as the device (see the module docstring).  ``mode`` is a
    :class:`Match`; ``dma`` the :class:`CassetteIommu` the device's DMA goes through."""

    traps_mmio = True

    def __init__(self, source, *, mode: Match = Match.STRICT, name: str | None = None):
        super().__init__(source, name=name)
        try:
            self.mode = Match(mode)
            self.label = self.name.removeprefix("replay:")
            self.names = RegisterNames(self.record)
            self.items = timeline(self.record, getattr(self._mapped, "path", None))
            self.accesses = sum(1 for it in self.items if it.kind is F.Accesses)
            self.done = 0                   # accesses served
            self.dma = CassetteIommu(self)
            self._cur = 0                   # STRICT: the next item
            self._history: collections.deque = collections.deque(maxlen=HISTORY)
            if self.mode is Match.PER_REGISTER:
                self._queues: dict = collections.defaultdict(collections.deque)
                self._events: dict = collections.defaultdict(collections.deque)
                self._device: collections.deque = collections.deque()
                for it in self.items:
                    if it.kind is F.Accesses:
                        self._queues[(it.write, it.index, it.offset, it.width)].append(it)
                    elif it.kind in _DEVICE_EVENTS:
                        self._device.append(it)
                    else:
                        self._events[it.kind].append(it)
        except BaseException:
            super().close()
            raise

    # ---- matching ---------------------------------------------------------------
    def _fail(self, number: int, expected: str, actual: str):
        recent = [h if isinstance(h, str) else f"#{h.number} {self._describe(h)}" for h in self._history]
        raise CassetteMismatch(self.label, number, expected, actual, recent)

    def _describe(self, it: _Item | None) -> str:
        if it is None:
            return "the end of the session"
        if it.kind is F.Accesses:
            return describe_access(self.names, it.write, it.index, it.offset, it.width, it.value)
        return describe_event(it.rec)

    def _play(self) -> None:
        """Play the device's part up to the program's next step."""
        if self.mode is Match.STRICT:
            items = self.items
            while self._cur < len(items) and items[self._cur].kind in _DEVICE_EVENTS:
                self._apply(items[self._cur].rec)
                self._cur += 1
        else:
            while self._device and self._device[0].number <= self.done:
                self._apply(self._device.popleft().rec)

    def _apply(self, r) -> None:
        if self._closed:                # finish() after close: the device's part has nobody to reach
            return
        if type(r) is F.IrqEvent:
            self.fire(r.index, r.vector)
        else:
            self.dma.write(r.iova, bytes(r.data))

    def _take_access(self, write: bool, index: int, offset: int, width: int, value) -> _Item:
        if self.mode is Match.STRICT:
            if self._cur < len(self.items) and self.items[self._cur].kind in _DEVICE_EVENTS:
                self._play()
            it = self.items[self._cur] if self._cur < len(self.items) else None
            if it is None or it.kind is not F.Accesses:
                self._fail(self.done, self._describe(it), self._actual(write, index, offset, width, value))
            if it.write is not write or it.index != index or it.offset != offset or it.width != width or \
                    (write and it.value != value):
                self._fail(it.number, self._describe(it), self._actual(write, index, offset, width, value))
            self._cur += 1
        else:
            q = self._queues.get((write, index, offset, width))
            if not q:
                self._fail(self.done, f"no more {'writes to' if write else 'reads of'} "
                           f"{self.names.register(index, offset)} with width {width} "
                           f"({self._left_for(index, offset)})", self._actual(write, index, offset, width, value))
            it = q[0]
            if write and it.value != value:
                self._fail(it.number, self._describe(it), self._actual(write, index, offset, width, value))
            q.popleft()
        self.done += 1
        self._history.append(it)
        return it

    def _actual(self, write: bool, index: int, offset: int, width: int, value) -> str:
        return describe_access(self.names, write, index, offset, width, value)

    def _left_for(self, index: int, offset: int) -> str:
        left = [f"{'write' if k[0] else 'read'}{_WIDTH_NAMES.get(k[3], k[3])} x{len(q)}"
                for k, q in self._queues.items() if k[1] == index and k[2] == offset and q]
        return "recorded still: " + ", ".join(left) if left else "none left at that offset"

    def _take_event(self, kind, check, actual: str) -> F.DeviceRecord:
        if self.mode is Match.STRICT:
            self._play()
            it = self.items[self._cur] if self._cur < len(self.items) else None
            if it is None or it.kind is not kind or not check(it.rec):
                self._fail(self.done, self._describe(it), actual)
            self._cur += 1
        else:
            q = self._events.get(kind)
            if not q or not check(q[0].rec):
                self._fail(self.done, self._describe(q[0]) if q else f"no more {F.type_name(kind.type)} records",
                           actual)
            it = q.popleft()
        self._history.append(f"({self._describe(it)})")
        return it.rec

    # ---- the device ------------------------------------------------------------------
    def pread(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        r, pos, _fd = self._access(offset, length, False)
        it = self._take_access(False, r.index, pos, length, None)
        self._play()
        v = it.value
        return bytes(v) if isinstance(v, bytes) else v.to_bytes(length, "little")

    def pwrite(self, offset: int, data: bytes) -> int:
        if len(data) == 0:
            return 0
        r, pos, _fd = self._access(offset, len(data), True)
        n = len(data)
        value = int.from_bytes(data, "little") if n in F.ACCESS_WIDTHS else bytes(data)
        self._take_access(True, r.index, pos, n, value)
        self._play()
        return n

    def mmap(self, offset: int, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> mmap.mmap:
        raise self._err(errno.EINVAL, f"mmap {length:#x} bytes at {offset:#x}: a replayed cassette traps "
                        f"every access")

    def set_irqs(self, irq_set: bytes) -> None:
        h = uapi.vfio_irq_set.from_buffer_copy(irq_set)
        fixed = ctypes.sizeof(uapi.vfio_irq_set)
        data = _normalized_irq_data(h, bytes(irq_set[fixed:]))
        actual = describe_event(F.IrqSet(h.index, self.done, h.start, h.count, h.flags, data))
        self._take_event(F.IrqSet, lambda r: (r.index, r.start, r.count, r.irq_flags, bytes(r.data)) ==
                         (h.index, h.start, h.count, h.flags, data), actual)
        super().set_irqs(irq_set)
        self._play()

    def reset(self) -> None:
        self._take_event(F.ResetEvent, lambda r: r.kind == F.RESET_DEVICE,
                         describe_event(F.ResetEvent(F.RESET_DEVICE, self.done)))
        super().reset()
        self._play()

    def pci_hot_reset(self, hot_reset: bytes) -> None:
        """The recorded hot reset, in its place (the groups named in the call are not
        checked: their fds mean nothing in another process)."""
        self._take_event(F.ResetEvent, lambda r: r.kind == F.RESET_HOT,
                         describe_event(F.ResetEvent(F.RESET_HOT, self.done)))
        if self._info.vfio_flags & uapi.VFIO_DEVICE_FLAGS_RESET:
            super().reset()             # the function is reset with its bus
        self._play()

    def marker(self, text: str) -> None:
        self._take_event(F.Marker, lambda r: r.text == text, describe_event(F.Marker(self.done, text)))
        self._play()

    def _dma_map(self, size: int, iova, readable: bool, writable: bool) -> int:
        flags = (F.DMA_READ if readable else 0) | (F.DMA_WRITE_OK if writable else 0)
        shown = "an IOVA the allocator picks" if iova is None else f"IOVA {iova:#x}"
        actual = f"DMA map of {size:#x} bytes at {shown}, flags {flags:#x}"
        r = self._take_event(F.DmaMap, lambda r: r.size == size and r.flags == flags and
                             (iova is None or r.iova == iova), actual)
        return r.iova

    def _dma_unmap(self, iova: int, size: int) -> None:
        self._take_event(F.DmaUnmap, lambda r: (r.iova, r.size) == (iova, size),
                         describe_event(F.DmaUnmap(self.done, iova, size)))
        self._play()

    def finish(self) -> None:
        """Check that the program made every recorded access and step (call it once the
        device is closed, so the steps closing makes are counted): raises
        :class:`CassetteMismatch` naming the first one it missed."""
        if self.mode is Match.STRICT:
            self._play()
            if self._cur < len(self.items):
                it = self.items[self._cur]
                self._fail(it.number, self._describe(it), "the end of the session (a missing access)")
        else:
            left = [q[0] for q in list(self._queues.values()) + list(self._events.values()) if q]
            if left:
                it = min(left, key=lambda i: i.number)
                self._fail(it.number, self._describe(it), "the end of the session (a missing access)")

    def close(self) -> None:
        if self._closed:
            return
        try:
            self.dma.close()
        finally:
            super().close()


def describe_event(r) -> str:
    """One line for a cassette event record."""
    t = type(r)
    if t is F.IrqSet:
        data = bytes(r.data[:16]).hex() + ("..." if len(r.data) > 16 else "")
        return (f"SET_IRQS index {r.index} start {r.start} count {r.count} flags {r.irq_flags:#x}"
                + (f" data {data}" if r.data else ""))
    if t is F.IrqEvent:
        return f"interrupt index {r.index} vector {r.vector}"
    if t is F.ResetEvent:
        return "hot reset" if r.kind == F.RESET_HOT else "device reset" if r.kind == F.RESET_DEVICE \
            else f"reset kind {r.kind}"
    if t is F.DmaMap:
        perms = ("R" if r.flags & F.DMA_READ else "") + ("W" if r.flags & F.DMA_WRITE_OK else "")
        return f"DMA map IOVA {r.iova:#x} size {r.size:#x} {perms or '-'}"
    if t is F.DmaUnmap:
        return f"DMA unmap IOVA {r.iova:#x} size {r.size:#x}"
    if t is F.DmaWrite:
        shown = bytes(r.data[:16]).hex() + ("..." if len(r.data) > 16 else "")
        return f"device wrote {len(r.data)} bytes at IOVA {r.iova:#x}: {shown}"
    if t is F.Marker:
        return f"marker {r.text!r}"
    return F.type_name(getattr(r, "type", None))


def is_cassette_path(arg) -> bool:
    """Whether ``arg`` (what a program was given instead of a PCI address) names a cassette
    file: a path that exists and is not a PCI address."""
    if not isinstance(arg, (str, os.PathLike)):
        return False
    s = os.fspath(arg)
    return (os.sep in s or s.endswith(".vfiorec")) and os.path.exists(s)


def open_cassette(path, *, mode: Match = Match.STRICT, name: str | None = None):
    """A :class:`~vfio.device.Device` replaying the cassette ``path`` (a context manager;
    ``dev.backend`` is the :class:`CassetteBackend`, ``dev.dma`` its :class:`CassetteIommu`).
    Raises :class:`~vfio.record.format.RecordFormatError` for a malformed file or one
    that is not a cassette, ``OSError`` when it cannot be opened."""
    from ..device import Device, Interface
    backend = CassetteBackend(path, mode=mode, name=name)
    try:
        return Device(backend, dma=backend.dma, interface=Interface.REPLAY)
    except BaseException:
        backend.close()
        raise


def record_if_requested(dev):
    """``dev``, recorded to :func:`recording_path` when recording is asked for (the hook
    :func:`vfio.open_pci_device` calls on each device it opens).  Raises InvalidValue
    when a second device would go to the same cassette."""
    path = recording_path()
    if path is None:
        return dev
    if path in _recorded:
        dev.close()
        raise InvalidValue(f"recording to {path}: a cassette records one device, and one is already recorded "
                           f"there by this program")
    _recorded.add(path)
    return record_device(dev, path)


_recorded: set[str] = set()


# ---------------------------------------------------------------------------------------
# summary and trace
# ---------------------------------------------------------------------------------------
def summary(rec: F.DeviceRecord) -> dict | None:
    """What ``vfio-inspect CASSETTE`` shows of the session (None for a file without one):
    counts of reads and writes per region, SET_IRQS calls, interrupts per IRQ index,
    resets, DMA mappings and the device's DMA writes, markers."""
    c = rec.cassette
    if c is None:
        return None
    names = RegisterNames(rec)
    per_region: dict = collections.Counter()
    reads = writes = 0
    irqs: dict = collections.Counter()
    out = {"recorded": c.text, "set_irqs": 0, "resets": 0, "dma_maps": 0, "dma_mapped_bytes": 0,
           "dma_writes": 0, "dma_written_bytes": 0, "markers": []}
    for r in rec.records:
        t = type(r)
        if t is F.Accesses:
            for e in r.entries:
                per_region[(names.region(e.index), e.op == F.ACCESS_WRITE)] += 1
                writes += e.op == F.ACCESS_WRITE
                reads += e.op != F.ACCESS_WRITE
        elif t is F.AccessData:
            per_region[(names.region(r.index), r.write)] += 1
            writes += r.write
            reads += not r.write
        elif t is F.IrqSet:
            out["set_irqs"] += 1
        elif t is F.IrqEvent:
            irqs[r.index] += 1
        elif t is F.ResetEvent:
            out["resets"] += 1
        elif t is F.DmaMap:
            out["dma_maps"] += 1
            out["dma_mapped_bytes"] += r.size
        elif t is F.DmaWrite:
            out["dma_writes"] += 1
            out["dma_written_bytes"] += len(r.data)
        elif t is F.Marker:
            out["markers"].append({"at": r.at, "text": r.text})
    out["accesses"] = reads + writes
    out["reads"], out["writes"] = reads, writes
    out["regions"] = [{"region": reg, "reads": per_region[(reg, False)], "writes": per_region[(reg, True)]}
                      for reg in sorted({k[0] for k in per_region})]
    out["interrupts"] = [{"index": i, "count": n} for i, n in sorted(irqs.items())]
    return out


def render_summary(s: dict, out) -> None:
    """The text form of :func:`summary` (``vfio-inspect CASSETTE``)."""
    print(f"  cassette: {s['recorded']}", file=out)
    print(f"    {s['accesses']} accesses ({s['reads']} reads, {s['writes']} writes): "
          + ", ".join(f"{r['region']} {r['reads']}R/{r['writes']}W" for r in s["regions"]), file=out)
    irqs = ", ".join(f"index {q['index']} x{q['count']}" for q in s["interrupts"]) or "none"
    print(f"    SET_IRQS calls {s['set_irqs']}; interrupts {irqs}; resets {s['resets']}", file=out)
    print(f"    DMA: {s['dma_maps']} mappings ({s['dma_mapped_bytes']} bytes), device wrote {s['dma_written_bytes']} "
          f"bytes in {s['dma_writes']} pieces", file=out)
    for m in s["markers"]:
        print(f"    marker after access {m['at']}: {m['text']}", file=out)


def trace_lines(rec: F.DeviceRecord):
    """The session as text, one access or event per line (like mmiotrace's text):
    ``#N R32 BAR0+0x24 (IRQ_STATUS) 0x00000100``; events indented with what they are."""
    names = RegisterNames(rec)
    n = 0
    for r in rec.records:
        t = type(r)
        if t is F.Accesses:
            for e in r.entries:
                yield f"{n:>7}  {describe_access(names, e.op == F.ACCESS_WRITE, e.index, e.offset, e.width, e.value)}"
                n += 1
        elif t is F.AccessData:
            yield f"{n:>7}  {describe_access(names, r.write, r.index, r.offset, len(r.data), bytes(r.data))}"
            n += 1
        elif t is F.Cassette:
            yield f"# cassette: {r.text}"
        elif t in (F.IrqSet, F.IrqEvent, F.ResetEvent, F.DmaMap, F.DmaUnmap, F.DmaWrite, F.Marker):
            yield f"{'':>7}  -- {describe_event(r)}"
