"""Device models: a PCI device written in Python, behind the same API as a real one.

A VFIO device is a handful of ioctls and a region offset space (see
:mod:`vfio.backend`).  A record file (:mod:`vfio.record.replay`) serves what a
real device answered once; it has no behaviour: a BAR is RAM.  A *device model*
is the behaviour no recording covers: a :class:`DeviceModel` subclass declares
its config space and BARs and answers each register access in Python, and
:class:`ModelBackend` serves it as a :class:`vfio.device.Device`, so a driver
written against the toolkit runs unchanged on the model (on a host with no
VFIO at all) and on the real device in a guest.

What the model gets, and how it reaches the driver:

* Register accesses.  BARs are not mmap-able (their regions lack the MMAP
  flag), so every access reaches the model through ``pread``/``pwrite``, split
  as vfio-pci's ``vfio_pci_core_do_io_rw`` splits them: naturally aligned
  pieces of 8, 4, 2 or 1 bytes.  A ``read32`` is exactly one
  ``model.read(bar, offset, 4)`` call; a 3-byte read is a 2- and a 1-byte call.
* Config space: the bytes the model declares, behind vfio-pci's virtualization
  for a user (:meth:`vfio.pci.vconfig.VirtualConfigSpace.vfio_pci_user`: BAR
  sizing, read-only IDs, Command, MSI address/data); the model reads it with
  :meth:`DeviceModel.config_read`.
* Interrupts: the IRQ indexes vfio-pci reports for the device (INTx, MSI,
  MSI-X with the vector counts the config space declares, REQ, ERR for
  PCI Express) with the
  kernel's SET_IRQS validation -- the replay backend's code, which this
  backend builds on.  :meth:`DeviceModel.raise_irq` signals the eventfd the
  driver registered: INTx automasks until the driver unmasks it (and stays
  pending while masked, as a level interrupt); MSI is delivered only while the
  driver has it enabled (:meth:`DeviceModel.msi_enabled`), otherwise lost.
* DMA: :class:`SoftIommu` is a :class:`vfio.dma.DmaSpace` that keeps the
  IOVA -> user memory table in Python; the driver maps buffers with the usual
  ``dev.dma.map``/``alloc``, and :meth:`DeviceModel.dma_read` /
  :meth:`DeviceModel.dma_write` go through that table.  A DMA to an IOVA no
  mapping covers (or against a mapping's read/write permission, or with bus
  mastering off) raises :class:`DmaFault` naming the IOVA, where a real IOMMU
  would log a fault and drop the access: the model's error surfaces from the
  register write that started the transfer.
* Reset: VFIO_DEVICE_RESET restores the config space and interrupt masks and
  calls :meth:`DeviceModel.reset`.

:func:`open_model_device` is the one way to open it.  QEMU's edu teaching
device ships as a model (:class:`vfio.models.edu.EduModel`); this runs on any
host, without a device or root::

    from vfio.model import open_model_device
    from vfio.models.edu import EduModel

    with open_model_device(EduModel()) as dev:
        bar = dev.region(0)
        assert bar.read32(0x00) == 0x010000ED        # identification
        bar.write32(0x04, 0x12345678)
        assert bar.read32(0x04) == 0xEDCBA987        # liveness: the inverse
"""

from __future__ import annotations

import bisect
import errno

from . import memory, uapi
from .dma import DmaSpace, PAGE_SIZE
from .errors import Error, InvalidValue
from .pci import regs as R
from .record import format as F
from .record.replay import ReplayBackend

__all__ = ["DeviceModel", "ModelBackend", "SoftIommu", "DmaFault", "open_model_device"]

#: The x86 MSI window: a hole in every IOVA space the kernel reports (as on real IOMMUs).
MSI_WINDOW = (0xFEE00000, 0xFEEFFFFF)
#: IOVA width of the software IOMMU (an Intel IOMMU's usual 48 bits).
IOVA_BITS = 48


class DmaFault(Error, OSError):
    """A model's DMA reached an IOVA the IOMMU would fault on (errno EFAULT)."""

    def __init__(self, message: str):
        super().__init__(errno.EFAULT, message)


class SoftIommu(DmaSpace):
    """A DMA space in software: the IOVA -> user memory table of a model's IOMMU.

    Ranges: everything below 2**48 except the x86 MSI window, as an Intel IOMMU
    reports them; page size: the CPU's.  :meth:`read` and :meth:`write` are the
    device side: they copy through the table and raise :class:`DmaFault` for a
    byte no mapping covers or a direction the mapping does not permit."""

    def __init__(self):
        super().__init__()
        self._starts: list[int] = []               # sorted IOVAs of the table's entries
        self._table: dict[int, tuple] = {}          # iova -> (size, vaddr, readable, writable)

    def iova_ranges(self) -> list:
        return [(0, MSI_WINDOW[0] - 1), (MSI_WINDOW[1] + 1, (1 << IOVA_BITS) - 1)]

    @property
    def min_page_size(self) -> int:
        return PAGE_SIZE

    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        bisect.insort(self._starts, iova)
        self._table[iova] = (size, vaddr, readable, writable)

    def _unmap(self, iova: int, size: int) -> int:
        entry = self._table.pop(iova, None)
        if entry is None:
            return 0
        self._starts.remove(iova)
        return entry[0]

    def _pieces(self, iova: int, length: int, write: bool):
        """(vaddr, done, n) pieces covering [iova, iova + length), or DmaFault at the first hole."""
        done = 0
        while done < length:
            at = iova + done
            i = bisect.bisect_right(self._starts, at) - 1
            entry = self._table[self._starts[i]] if i >= 0 else None
            if entry is None or at >= self._starts[i] + entry[0]:
                raise DmaFault(f"DMA {'write' if write else 'read'} of {length} bytes at IOVA {iova:#x}: "
                               f"IOVA {at:#x} is not mapped (IOMMU fault)")
            start = self._starts[i]
            size, vaddr, readable, writable = entry
            if not (writable if write else readable):
                raise DmaFault(f"DMA {'write' if write else 'read'} at IOVA {at:#x}: the mapping at "
                               f"{start:#x} is not {'writable' if write else 'readable'} (IOMMU fault)")
            n = min(length - done, start + size - at)
            yield vaddr + (at - start), done, n
            done += n

    def read(self, iova: int, length: int) -> bytes:
        """What the device reads at ``iova`` (its DMA from memory)."""
        out = bytearray(length)
        for vaddr, done, n in self._pieces(iova, length, False):
            out[done:done + n] = memory.copy_from(vaddr, n)
        return bytes(out)

    def write(self, iova: int, data: bytes) -> None:
        """The device writes ``data`` at ``iova`` (its DMA to memory)."""
        for vaddr, done, n in self._pieces(iova, len(data), True):
            memory.copy_to(vaddr, data[done:done + n])

    def close(self) -> None:
        """Unmap everything mapped through this space (the device owning it is closing)."""
        self.unmap_all()


class DeviceModel:
    """A PCI device's behaviour, in Python.  Subclass it and declare:

    * ``config``: the initial config space (256 or 4096 bytes; vendor/device IDs,
      BARs' type bits, capabilities -- :mod:`vfio.pci.regs` has the offsets);
    * ``bars``: ``{index: size}`` of its memory BARs (sizes powers of two);

    and implement :meth:`read` and :meth:`write`.  The model calls
    :meth:`raise_irq`, :meth:`lower_irq`, :meth:`msi_enabled`,
    :meth:`dma_read`, :meth:`dma_write` and :meth:`config_read` once served by a
    :class:`ModelBackend` (before that they raise ``InvalidValue``).
    """

    #: Initial config space bytes.
    config: bytes = b""
    #: ``{bar index: size in bytes}``.
    bars: dict = {}
    #: Name in error messages.
    name: str = "model"

    _backend: "ModelBackend | None" = None

    # ---- what a model implements -----------------------------------------------------
    def read(self, bar: int, offset: int, size: int) -> int:
        """Value of a ``size``-byte (1, 2, 4 or 8) read at ``offset`` of BAR ``bar``."""
        raise NotImplementedError

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        """A ``size``-byte write of ``value`` at ``offset`` of BAR ``bar``."""
        raise NotImplementedError

    def reset(self) -> None:
        """Device reset (VFIO_DEVICE_RESET): back to the power-on state."""

    # ---- what a model may call --------------------------------------------------------
    def attach(self, backend: "ModelBackend") -> None:
        """Called by :class:`ModelBackend` when it starts serving this model (once)."""
        if self._backend is not None:
            raise InvalidValue(f"{self.name}: the model is already served by {self._backend.name}")
        self._backend = backend

    def _be(self) -> "ModelBackend":
        if self._backend is None or self._backend._closed:
            raise InvalidValue(f"{self.name}: the model is not served by an open ModelBackend")
        return self._backend

    def raise_irq(self, index: int, vector: int = 0) -> bool:
        """Assert ``vector`` of IRQ ``index`` (``uapi.VFIO_PCI_*_IRQ_INDEX``); True if the
        driver's eventfd was signalled (False: masked and left pending, not enabled, or
        an MSI/MSI-X message with bus mastering off, which is lost)."""
        be = self._be()
        if index in (uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_PCI_MSIX_IRQ_INDEX) and \
                not self.config_read(R.COMMAND, 2) & R.COMMAND_MASTER:
            return False            # an MSI is a memory write: dropped with bus mastering off
        return be.fire(index, vector)

    def lower_irq(self, index: int, vector: int = 0) -> None:
        """Deassert a level interrupt: a pending (masked) assertion is dropped."""
        self._be().lower(index, vector)

    def msi_enabled(self) -> bool:
        """Whether the driver has MSI enabled (VFIO_DEVICE_SET_IRQS with an eventfd)."""
        return self._be().irq_state(uapi.VFIO_PCI_MSI_IRQ_INDEX).enabled

    def config_read(self, offset: int, size: int) -> int:
        """A config-space register as the device sees it (after the driver's writes)."""
        be = self._be()
        return int.from_bytes(be.pread(be.config_offset + offset, size), "little")

    def dma_read(self, iova: int, length: int) -> bytes:
        """Read ``length`` bytes of memory at ``iova``.  Raises :class:`DmaFault`."""
        return self._be().dma_space_for(iova, length, False).read(iova, length)

    def dma_write(self, iova: int, data: bytes) -> None:
        """Write ``data`` to memory at ``iova``.  Raises :class:`DmaFault`."""
        self._be().dma_space_for(iova, len(data), True).write(iova, data)


def _irq_count(config: bytes, cap_id: int, count_of) -> int:
    """Vectors of the MSI / MSI-X capability the config space declares (0 without one)."""
    pos, seen = config[R.CAPABILITY_LIST] & ~3, 0
    while pos and seen < 48:            # bounded: at most 48 capabilities fit the header's 192 bytes
        if config[pos] == cap_id:
            return count_of(int.from_bytes(config[pos + 2:pos + 4], "little"))
        pos, seen = config[pos + 1] & ~3, seen + 1
    return 0


def _model_record(model: DeviceModel) -> F.DeviceRecord:
    """The device vfio-pci would describe for the model's config space and BARs."""
    cfg = bytes(model.config)
    if len(cfg) not in (256, 4096):
        raise InvalidValue(f"{model.name}: config space of {len(cfg)} bytes (256 or 4096)")
    rw = uapi.VFIO_REGION_INFO_FLAG_READ | uapi.VFIO_REGION_INFO_FLAG_WRITE
    recs: list = [F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI | uapi.VFIO_DEVICE_FLAGS_RESET,
                               uapi.VFIO_PCI_NUM_REGIONS, uapi.VFIO_PCI_NUM_IRQS)]
    for i in range(R.STD_NUM_BARS + 1):                   # BARs 0-5 and the ROM (size 0)
        size = model.bars.get(i, 0)
        if size and (size & (size - 1) or size < 16):
            raise InvalidValue(f"{model.name}: BAR {i} size {size:#x} is not a power of two of 16 or more")
        recs.append(F.Region(i, 0, i << uapi.VFIO_PCI_OFFSET_SHIFT, size, 0,
                             [F.RegionInfo(rw if size else 0)]))
    ci = uapi.VFIO_PCI_CONFIG_REGION_INDEX
    recs.append(F.Region(ci, 0, ci << uapi.VFIO_PCI_OFFSET_SHIFT, len(cfg), 0,
                         [F.RegionInfo(rw), F.PciConfigSpace(), F.RegionData(0, cfg)]))
    ev = uapi.VFIO_IRQ_INFO_EVENTFD
    has_caps = cfg[R.STATUS] & R.STATUS_CAP_LIST
    msi = _irq_count(cfg, R.CAP_ID_MSI, lambda c: 1 << ((c >> 1) & 7)) if has_caps else 0
    msix = _irq_count(cfg, R.CAP_ID_MSIX, lambda c: (c & 0x7FF) + 1) if has_caps else 0
    intx = 1 if cfg[R.INTERRUPT_PIN] else 0
    recs += [F.Interrupt(uapi.VFIO_PCI_INTX_IRQ_INDEX,
                         ev | uapi.VFIO_IRQ_INFO_MASKABLE | uapi.VFIO_IRQ_INFO_AUTOMASKED, intx),
             F.Interrupt(uapi.VFIO_PCI_MSI_IRQ_INDEX, ev | uapi.VFIO_IRQ_INFO_NORESIZE, msi),
             F.Interrupt(uapi.VFIO_PCI_MSIX_IRQ_INDEX, ev | uapi.VFIO_IRQ_INFO_NORESIZE, msix),
             F.Interrupt(uapi.VFIO_PCI_REQ_IRQ_INDEX, ev | uapi.VFIO_IRQ_INFO_NORESIZE, 1)]
    if has_caps and _irq_count(cfg, R.CAP_ID_EXP, lambda c: 1):     # vfio-pci: ERR on PCI Express only
        recs.append(F.Interrupt(uapi.VFIO_PCI_ERR_IRQ_INDEX, ev | uapi.VFIO_IRQ_INFO_NORESIZE, 1))
    return F.DeviceRecord(recs)


class ModelBackend(ReplayBackend):
    """A :class:`DeviceModel` served as a VFIO device (see the module docstring).

    Built on :class:`~vfio.record.replay.ReplayBackend` over the device
    description vfio-pci would give (region and IRQ info, config space
    virtualization, SET_IRQS, reset); BAR accesses go to the model instead of
    a region's bytes.  ``dma`` is the DMA space the model's DMA goes through."""

    def __init__(self, model: DeviceModel, dma: SoftIommu, *, name: str | None = None):
        super().__init__(_model_record(model), name=name or f"model:{model.name}")
        self.model = model
        self.dma = dma
        self.config_offset = uapi.VFIO_PCI_CONFIG_REGION_INDEX << uapi.VFIO_PCI_OFFSET_SHIFT
        model.attach(self)

    def _bar_access(self, offset: int, length: int, write: bool):
        r, pos, _fd = self._access(offset, length, write)
        return (r.index, pos) if r.index in self.model.bars and r.index < R.STD_NUM_BARS else (None, pos)

    @staticmethod
    def _pieces(pos: int, length: int):
        """vfio_pci_core_do_io_rw's split: naturally aligned 8, 4, 2 or 1 bytes."""
        done = 0
        while done < length:
            at, left = pos + done, length - done
            n = next(n for n in (8, 4, 2, 1) if left >= n and at % n == 0)
            yield done, at, n
            done += n

    def pread(self, offset: int, length: int) -> bytes:
        if length == 0:
            return b""
        bar, pos = self._bar_access(offset, length, False)
        if bar is None:
            return super().pread(offset, length)
        out = bytearray(length)
        for done, at, n in self._pieces(pos, length):
            v = self.model.read(bar, at, n)
            if not isinstance(v, int) or not 0 <= v < 1 << (8 * n):
                raise InvalidValue(f"{self.name}: model read of {n} bytes at BAR {bar} + {at:#x} "
                                   f"returned {v!r}, not a {8 * n}-bit value")
            out[done:done + n] = v.to_bytes(n, "little")
        return bytes(out)

    def pwrite(self, offset: int, data: bytes) -> int:
        if len(data) == 0:
            return 0
        bar, pos = self._bar_access(offset, len(data), True)
        if bar is None:
            return super().pwrite(offset, data)
        for done, at, n in self._pieces(pos, len(data)):
            self.model.write(bar, at, n, int.from_bytes(data[done:done + n], "little"))
        return len(data)

    def lower(self, index: int, vector: int = 0) -> None:
        """Deassert a level interrupt: drop it if it is pending behind a mask."""
        irq = self._irqs.get(index)
        if irq is None or not 0 <= vector < irq.count:
            raise InvalidValue(f"{self.name}: no IRQ vector {index}.{vector}")
        irq.pending[vector] = False

    def dma_space_for(self, iova: int, length: int, write: bool) -> SoftIommu:
        """The DMA space a transfer goes through: refused while bus mastering is off."""
        cmd = int.from_bytes(super().pread(self.config_offset + R.COMMAND, 2), "little")
        if not cmd & R.COMMAND_MASTER:
            raise DmaFault(f"{self.name}: DMA {'write' if write else 'read'} of {length} bytes at IOVA "
                           f"{iova:#x} with bus mastering off (Command register {cmd:#06x})")
        return self.dma

    def reset(self) -> None:
        super().reset()
        self._cfg_space = None          # the virtual config space is rebuilt from the reset bytes
        self.model.reset()


def open_model_device(model: DeviceModel, *, name: str | None = None):
    """A :class:`vfio.device.Device` serving ``model``, with a :class:`SoftIommu` as its
    ``dma``; a context manager, closing the backend and the DMA space (unmapping
    everything) with the device.  Raises ``InvalidValue`` for a model whose config
    space or BARs no PCI device could have, or one already served."""
    from .device import Device, Interface
    space = SoftIommu()
    backend = ModelBackend(model, space, name=name)
    try:
        return Device(backend, owns=[space], dma=space, interface=Interface.MODEL)
    except BaseException:
        backend.close()
        raise
