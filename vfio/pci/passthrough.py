"""The PCI passthrough device model: a host device as a VMM shows it to a guest.

A VMM that assigns a host PCI function to a guest through VFIO does not hand
the guest the raw device.  It shows a *virtual* config space (BARs hold the
guest's addresses, the capability list is the VMM's, MSI/MSI-X are
emulated), lets the guest reach most of each BAR directly (the mmap'ed parts
of the VFIO BAR regions become guest memory slots), traps what must be
emulated (the MSI-X table and PBA pages), turns the guest's interrupt set-up
into ``VFIO_DEVICE_SET_IRQS`` calls with one eventfd per vector (KVM irqfds),
and maps guest RAM for the device's DMA with guest-physical address == IOVA.
QEMU's hw/vfio/pci.c and cloud-hypervisor's pci/vfio crates are the
references; :class:`PassthroughDevice` is that model, written on a
:class:`vfio.device.Device` (a real one or a replayed record file) so it can be
driven by a VMM, a test, or a userspace driver acting as the guest OS.

Pieces and who owns what:

* Config space: :class:`vfio.pci.vconfig.VirtualConfigSpace` over the device's
  config region (this class is its :class:`~vfio.pci.vconfig.ConfigBacking`).
  Emulated: BARs (sized from the VFIO region sizes), ROM BAR, interrupt line,
  the capability list structure, the whole MSI and MSI-X capabilities.  Passed
  through (to vfio-pci, which virtualizes further): Command (memory/IO decode,
  bus master), Status, the rest of the capabilities.  Guest accesses are
  :meth:`PassthroughDevice.config_read` / :meth:`~PassthroughDevice.config_write`.
* BARs: :class:`PassthroughBar` per implemented BAR, with the areas a VMM may
  map straight into the guest (:attr:`PassthroughBar.direct_areas`: the
  kernel's mmap-able areas, sparse-mmap aware, minus the pages holding the
  MSI-X table or PBA) and ``read``/``write`` for everything (trapped parts
  included: the table and PBA are emulated, other bytes of their pages go to
  the device).  :meth:`PassthroughDevice.mmio_read` and friends dispatch
  guest-physical accesses through the BAR addresses and decode-enable bits the
  guest programmed.
* Interrupts (see :mod:`vfio.pci.msix` for the masking scheme): INTx is
  enabled by the VMM (:meth:`~PassthroughDevice.enable_intx`, with a resample
  eventfd for level-triggered EOI); MSI and MSI-X follow the guest's writes to
  the virtual capabilities and the emulated table.  Only one of the three is
  programmed in the kernel at a time, as vfio-pci requires: enabling MSI or
  MSI-X disables INTx, disabling them brings INTx back if the VMM wanted it.
  Guest-facing eventfds per vector are stable: :meth:`~PassthroughDevice.msi_vector`,
  :meth:`~PassthroughDevice.msix_vector`, :attr:`PassthroughDevice.intx`.
* DMA: :meth:`~PassthroughDevice.map_guest_memory` maps memory at IOVA ==
  guest-physical address through the device's DMA space (container or IOAS).
* State: :meth:`~PassthroughDevice.get_state` / :meth:`~PassthroughDevice.set_state`
  are pure accessors (no device access, no SET_IRQS); ``set_state`` refuses
  state saved from a device with another identity, capability set or MSI-X
  table.  :meth:`~PassthroughDevice.resume` is the command that makes the
  device match loaded state (Command register, interrupt programming);
  :meth:`~PassthroughDevice.reset` is the function reset plus the reset of the
  emulated state.

Not done here: MSI-X table relocation (QEMU's ``x-msix-relocation``), PCIe
capability fix-ups for a different guest topology, VGA.  Migration:
:meth:`~PassthroughDevice.save_migration` / :meth:`~PassthroughDevice.load_migration`
carry the model's state and the device's own (:mod:`vfio.migration`) in one stream.
"""

from __future__ import annotations

import errno
import mmap
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping

from .. import uapi
from ..device import Device, PAGE_SIZE, Region
from ..dma import DmaBuffer, DmaMapping
from .. import memory
from ..errors import FeatureMissing, InvalidValue, RegionAccessError, UnsafeOperationError, VfioError
from . import regs as R
from .caps import MsiCap, MsixCap
from .msix import MsiMessage, MsixTable, Vector, eventfd_pair
from .regs import BarKind, ValueEnum
from .vconfig import StateMismatchError, VirtualConfigSpace

__all__ = ["PassthroughDevice", "PassthroughBar", "DirectArea", "Intx", "IrqMode", "STATE_FORMAT", "STATE_VERSION",
           "StateMismatchError", "MsiMessage", "Vector"]

STATE_FORMAT = "vfio.pci.passthrough"
STATE_VERSION = 1

_INTX, _MSI, _MSIX = uapi.VFIO_PCI_INTX_IRQ_INDEX, uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_PCI_MSIX_IRQ_INDEX


class IrqMode(ValueEnum):
    """Which interrupt kind is programmed in the kernel (vfio-pci allows one at a time).

    ``pt.irq_mode == "msix"`` holds and saved state keeps the value.
    """
    NONE = "none"
    INTX = "intx"
    MSI = "msi"
    MSIX = "msix"

    @property
    def irq_index(self) -> int:
        """The VFIO IRQ index of the mode (VFIO_PCI_*_IRQ_INDEX); not for NONE."""
        return {IrqMode.INTX: _INTX, IrqMode.MSI: _MSI, IrqMode.MSIX: _MSIX}[self]

_TRIGGER_EVENTFD = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
_FROM_DEVICE = object()

#: A listener is told ``(irq_index, vector_number)`` whenever a vector's message
#: or mask changes, so a VMM can update the KVM route of that vector's irqfd.
RouteListener = Callable[[int, int], None]


def _page_down(n: int) -> int:
    return n // PAGE_SIZE * PAGE_SIZE


def _page_up(n: int) -> int:
    return (n + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE


def _subtract(areas: Iterable[tuple[int, int]], holes: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """(offset, size) areas minus [start, end) holes."""
    out = [(o, o + s) for o, s in areas]
    for hs, he in holes:
        nxt = []
        for s, e in out:
            if he <= s or e <= hs:
                nxt.append((s, e))
                continue
            if s < hs:
                nxt.append((s, hs))
            if he < e:
                nxt.append((he, e))
        out = nxt
    return [(s, e - s) for s, e in sorted(out) if e > s]


@dataclass(frozen=True)
class DirectArea:
    """A part of a BAR a VMM may map straight into the guest: ``size`` bytes at BAR
    ``offset``, mmap'ed at ``host_address`` (the ``userspace_addr`` of a KVM memory slot).

    The BAR owns ``mapping``: the address is valid until the BAR is closed."""
    bar: int
    offset: int
    size: int
    mapping: mmap.mmap

    @property
    def host_address(self) -> int:
        return memory.base_address(self.mapping)


class PassthroughBar:
    """One implemented BAR of a passed-through device.

    ``address`` is what the guest programmed in the virtual BAR; the device's
    own BAR is never touched.  ``read``/``write`` take an offset inside the BAR
    and a width of 1, 2, 4 or 8 bytes: emulated ranges (MSI-X table, PBA) are
    answered by the model, the rest goes to the device through the mmap'ed
    region where the kernel allows it (sparse holes and non-mmap-able BARs,
    like I/O port BARs, through pread/pwrite).
    """

    def __init__(self, pt: "PassthroughDevice", index: int, kind: BarKind, size: int, prefetchable: bool,
                 region: Region):
        self._pt = pt
        self.index, self.kind, self.size, self.prefetchable = index, kind, size, prefetchable
        self.region = region
        self._io = region.map() if region.info.mmappable and region.info.mmap_areas() else region
        self._rd = {1: self._io.read8, 2: self._io.read16, 4: self._io.read32, 8: self._io.read64}
        self._wr = {1: self._io.write8, 2: self._io.write16, 4: self._io.write32, 8: self._io.write64}
        #: [(start, end, reader(offset, size), writer(offset, size, value))]: emulated byte ranges
        self._emulated: list[tuple[int, int, Callable, Callable]] = []
        #: page-rounded [start, end) ranges the guest must not reach directly
        self._trap_pages: list[tuple[int, int]] = []
        self._direct: list[DirectArea] = []

    def __repr__(self) -> str:
        return (f"PassthroughBar({self._pt.name} BAR{self.index} {self.kind} size {self.size:#x} "
                f"at {self.address:#x})")

    def _emulate(self, start: int, length: int, reader: Callable, writer: Callable) -> None:
        self._emulated.append((start, start + length, reader, writer))
        self._trap_pages.append((_page_down(start), _page_up(start + length)))

    @property
    def is_io(self) -> bool:
        return self.kind is BarKind.IO

    @property
    def address(self) -> int:
        """The guest-programmed address (flag bits masked off)."""
        return self._pt.config.bar_address(self.index)

    @property
    def decoding(self) -> bool:
        """Whether the guest enabled decode for this BAR's space (Command IO/Memory)."""
        return bool(self._pt.command & (R.COMMAND_IO if self.is_io else R.COMMAND_MEMORY))

    @property
    def direct_areas(self) -> list[tuple[int, int]]:
        """(offset, size) parts the guest may access without trapping: the kernel's mmap-able
        areas minus the pages holding emulated registers (MSI-X table, PBA)."""
        if self._io is self.region:
            return []
        return _subtract(self.region.info.mmap_areas(), self._trap_pages)

    @property
    def trapped_areas(self) -> list[tuple[int, int]]:
        """(offset, size) parts every guest access of which must go through :meth:`read`/:meth:`write`."""
        return _subtract([(0, self.size)], [(o, o + s) for o, s in self.direct_areas])

    def map_direct(self) -> list[DirectArea]:
        """mmap every direct area (once; owned by the BAR) for a VMM to install as guest memory.

        Raises :class:`VfioError` (errno kept, BAR and area named) if the kernel refuses one;
        the areas mapped before it are unmapped."""
        if not self._direct:
            backend = self._pt.device.backend
            try:
                for off, size in self.direct_areas:
                    try:
                        mm = backend.mmap(self.region.info.offset + off, size, memory.PROT_RW)
                    except VfioError as e:
                        raise VfioError(e.errno, f"BAR{self.index} direct area {off:#x}+{size:#x}: {e.what}") from None
                    self._direct.append(DirectArea(self.index, off, size, mm))
            except BaseException:
                self._close_direct()
                raise
        return list(self._direct)

    def read(self, offset: int, size: int) -> int:
        for s, e, reader, _w in self._emulated:
            if s <= offset < e:
                return reader(offset - s, size)
        fn = self._rd.get(size)
        if fn is None:
            raise RegionAccessError(f"BAR{self.index} of {self._pt.name}: {size}-byte access at {offset:#x}: "
                                    f"only 1, 2, 4 or 8")
        return fn(offset)

    def write(self, offset: int, size: int, value: int) -> None:
        for s, e, _r, writer in self._emulated:
            if s <= offset < e:
                writer(offset - s, size, value)
                return
        fn = self._wr.get(size)
        if fn is None:
            raise RegionAccessError(f"BAR{self.index} of {self._pt.name}: {size}-byte access at {offset:#x}: "
                                    f"only 1, 2, 4 or 8")
        fn(offset, value)

    def read32(self, offset: int) -> int:
        return self.read(offset, 4)

    def write32(self, offset: int, value: int) -> None:
        self.write(offset, 4, value)

    def read64(self, offset: int) -> int:
        return self.read(offset, 8)

    def write64(self, offset: int, value: int) -> None:
        self.write(offset, 8, value)

    def _close_direct(self) -> None:
        direct, self._direct = self._direct, []
        for d in direct:
            memory.release(d.mapping)

    def close(self) -> None:
        self._close_direct()
        if self._io is not self.region:
            self._io.close()


class Intx:
    """The INTx line of the device as eventfds.

    ``eventfd`` is signalled when the device asserts INTx (the kernel masks the
    line then: INTx is level-triggered and automasked); the guest's EOI must
    unmask it, either by :meth:`PassthroughDevice.intx_unmask` or by signalling
    ``resample`` (the eventfd a VMM gives KVM as the irqfd's resamplefd).
    """

    def __init__(self, label: str):
        self.eventfd, self.resample = eventfd_pair(f"{label} INTx", f"{label} INTx resample")

    def close(self) -> None:
        self.eventfd.close()
        self.resample.close()


class PassthroughDevice:
    """A VFIO PCI device as a guest sees it.  See the module docstring.

    ``device``: an open :class:`vfio.device.Device` (real or replayed).
    ``dma``: the DMA space for guest memory (default ``device.dma``; None for
    none).  ``capabilities`` / ``extended_capabilities``: IDs the guest may see
    (None: all the device has).  ``owns_device``: close the device with the model.
    """

    def __init__(self, device: Device, *, dma=_FROM_DEVICE, capabilities: Iterable[int] | None = None,
                 extended_capabilities: Iterable[int] | None = None, owns_device: bool = False):
        if not device.info.is_pci:
            raise InvalidValue(f"{device.name} is not a PCI device (VFIO_DEVICE_FLAGS_PCI clear)")
        self.device = device
        self.name = device.name
        self.dma = getattr(device, "dma", None) if dma is _FROM_DEVICE else dma
        self._owns_device = owns_device
        self._closed = False
        self._mode = IrqMode.NONE        # which IRQ index is programmed in the kernel
        self._msi_programmed = 0         # MSI vectors programmed while the mode is MSI
        #: typed views of the virtual MSI / MSI-X capabilities (they follow the guest's writes)
        self._msi: MsiCap | None = None
        self._msix: MsixCap | None = None
        self._intx_wanted = False
        self._guest_ram: list[DmaMapping] = []
        self.route_listeners: list[RouteListener] = []
        self.bars: dict[int, PassthroughBar] = {}
        self._msi_vectors: list[Vector] = []
        self._msix_vectors: list[Vector] = []
        self.intx: Intx | None = None
        self.msix_table: MsixTable | None = None
        try:
            self._setup(capabilities, extended_capabilities)
        except BaseException:
            self._release()
            raise

    @classmethod
    def open(cls, bdf: str, **kw) -> "PassthroughDevice":
        """Open ``bdf`` (bound to vfio-pci) with :func:`vfio.open_pci_device` and model it; owns the device.
        ``bdf`` may be a cassette's path instead (replayed, :mod:`vfio.record.cassette`), and the
        device is recorded while ``$VFIO_RECORD`` names a cassette, as ``open_pci_device`` does."""
        import vfio
        dev = vfio.open_pci_device(bdf, interface=kw.pop("interface", "auto"))
        try:
            return cls(dev, owns_device=True, **kw)
        except BaseException:
            dev.close()
            raise

    # ------------------------------------------------------------------ set-up
    def _setup(self, capabilities, extended_capabilities) -> None:
        dev = self.device
        cfg = dev.config
        self._cfg = cfg
        self._cfg_rd = {1: cfg.read8, 2: cfg.read16, 4: cfg.read32}
        self._cfg_wr = {1: cfg.write8, 2: cfg.write16, 4: cfg.write32}
        raw = cfg.read(0, cfg.size)
        if len(raw) < R.CFG_SPACE_SIZE:
            # a driver may declare less than the 256-byte page (the sample mtty: 0xff bytes); what it
            # lacks reads as zero, as in the config buffer QEMU's vfio-pci fills from the region
            raw += bytes(R.CFG_SPACE_SIZE - len(raw))
        sizes, rom_size = {}, 0
        for i in range(uapi.VFIO_PCI_ROM_REGION_INDEX + 1):
            try:
                info = dev.region_info(i)
            except VfioError as e:
                if e.errno != errno.EINVAL:
                    raise
                continue
            if i == uapi.VFIO_PCI_ROM_REGION_INDEX:
                rom_size = info.size
            elif info.size:
                sizes[i] = info.size
        self.config = VirtualConfigSpace(raw, bars=sizes, rom_size=rom_size, backing=self,
                                         source=f"virtual config space of {self.name}")
        if capabilities is not None or extended_capabilities is not None:
            self.config.restrict_capabilities(capabilities or (), extended_capabilities or ())
        for spec in self.config.bars.values():
            self.bars[spec.index] = PassthroughBar(self, spec.index, spec.kind, spec.size, spec.prefetchable,
                                                   dev.region(spec.index))
        self._command = self.config.read(R.COMMAND, 2)
        self.config.watch(R.COMMAND, 2, self._command_written)
        label = self.name
        if dev.info.num_irqs > _INTX and self.config.read(R.INTERRUPT_PIN, 1):
            if dev.irq_info(_INTX).count:
                self.intx = Intx(label)
        self._setup_msi(label)
        self._setup_msix(label)

    def _irq_count(self, index: int) -> int:
        if self.device.info.num_irqs <= index:
            return 0
        return self.device.irq_info(index).count

    def _setup_msi(self, label: str) -> None:
        off = self.config.find_capability(R.CAP_ID_MSI)
        if off is None:
            return
        msi = MsiCap(self.config.peek, off)
        n = min(msi.vectors_capable, self._irq_count(_MSI))
        if n == 0:
            # the kernel offers no MSI vector: a capability the guest could enable but never use
            self.config.hide_capability(off)
            return
        self._msi = msi
        self._msi_vectors = [Vector(_MSI, v, f"{label} MSI") for v in range(n)]
        self.config.watch(off, msi.size, self._msi_written)

    def _setup_msix(self, label: str) -> None:
        off = self.config.find_capability(R.CAP_ID_MSIX)
        if off is None:
            return
        msix = MsixCap(self.config.peek, off)
        size = msix.table_size
        kernel = self._irq_count(_MSIX)
        tbir, toff, pbir, poff = msix.table_bir, msix.table_offset, msix.pba_bir, msix.pba_offset
        for what, bir, o, length in (("table", tbir, toff, msix.table_bytes), ("PBA", pbir, poff, msix.pba_bytes)):
            bar = self.bars.get(bir)
            if bar is None or bar.is_io or o + length > bar.size:
                raise VfioError(errno.EPROTO, f"MSI-X capability at {off:#x} of {self.name}: {what} at BAR{bir} "
                                f"offset {o:#x} (+{length:#x}) is not inside an implemented memory BAR")
        if kernel < size:
            raise VfioError(errno.EPROTO, f"MSI-X capability at {off:#x} of {self.name} has {size} vectors, "
                            f"the kernel's MSI-X IRQ index {kernel}")
        self._msix = msix
        self._msix_vectors = [Vector(_MSIX, v, f"{label} MSI-X") for v in range(size)]
        self.msix_table = MsixTable(size, pending=lambda v: self._msix_vectors[v].pending)
        self.bars[tbir]._emulate(toff, self.msix_table.table_bytes, self.msix_table.read_table,
                                 self._msix_table_written)
        self.bars[pbir]._emulate(poff, self.msix_table.pba_bytes, self.msix_table.read_pba, self._pba_written)
        self.config.watch(off + msix.control_offset, 2, self._msix_control_written)

    # ------------------------------------------------------------------ ConfigBacking
    def passthrough_read(self, offset: int, size: int) -> int:
        return self._cfg_rd[size](offset)

    def passthrough_write(self, offset: int, size: int, value: int) -> None:
        self._cfg_wr[size](offset, value)

    # ------------------------------------------------------------------ guest config accesses
    def config_read(self, offset: int, size: int) -> int:
        """A guest config read (1, 2 or 4 bytes, naturally aligned)."""
        if self._msi is not None and self._msi.maskable:
            pend = self._msi.base + self._msi.pending_offset
            if offset < pend + 4 and pend < offset + size:
                self.config.poke(pend, 4, sum(1 << v.number for v in self._msi_vectors if v.pending))
        return self.config.read(offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        """A guest config write: emulated registers change here, the rest reaches the device;
        MSI/MSI-X enables and BAR/Command changes take effect."""
        self.config.write(offset, size, value)

    @property
    def command(self) -> int:
        """The guest's Command register as last written (passed through to the device)."""
        return self._command

    def _command_written(self, offset: int, size: int, value: int) -> None:
        self._command = self.config.read(R.COMMAND, 2)

    # ------------------------------------------------------------------ guest-physical MMIO / IO
    def _claim(self, addr: int, size: int, io: bool) -> tuple[PassthroughBar, int]:
        for bar in self.bars.values():
            if bar.is_io == io and bar.decoding:
                base = bar.address
                if base <= addr and addr + size <= base + bar.size:
                    return bar, addr - base
        space = "I/O port" if io else "guest-physical address"
        raise RegionAccessError(f"{self.name}: no BAR with decode enabled claims {space} {addr:#x} "
                                f"(+{size}) (Command {self._command:#06x})")

    def _dispatch(self, addr: int, size: int, io: bool, value: int | None = None) -> int | None:
        bar, off = self._claim(addr, size, io)
        if value is None:
            return bar.read(off, size)
        bar.write(off, size, value)
        return None

    def mmio_read(self, gpa: int, size: int) -> int:
        return self._dispatch(gpa, size, False)

    def mmio_write(self, gpa: int, size: int, value: int) -> None:
        self._dispatch(gpa, size, False, value)

    def io_read(self, port: int, size: int) -> int:
        return self._dispatch(port, size, True)

    def io_write(self, port: int, size: int, value: int) -> None:
        self._dispatch(port, size, True, value)

    def bar(self, index: int) -> PassthroughBar:
        b = self.bars.get(index)
        if b is None:
            raise FeatureMissing(f"{self.name} has no implemented BAR{index} (has {sorted(self.bars)})")
        return b

    # ------------------------------------------------------------------ interrupts: state
    @property
    def irq_mode(self) -> IrqMode:
        """Which interrupt kind is programmed in the kernel (an :class:`IrqMode`: 'none', 'intx',
        'msi' or 'msix')."""
        return self._mode

    def msi_vector(self, n: int) -> Vector:
        if not self._msi_vectors:
            raise FeatureMissing(f"{self.name} has no usable MSI capability")
        return self._msi_vectors[n]

    def msix_vector(self, n: int) -> Vector:
        if not self._msix_vectors:
            raise FeatureMissing(f"{self.name} has no MSI-X capability")
        return self._msix_vectors[n]

    @property
    def msi_vectors(self) -> list[Vector]:
        return list(self._msi_vectors)

    @property
    def msix_vectors(self) -> list[Vector]:
        return list(self._msix_vectors)

    def msi_message(self, n: int) -> MsiMessage:
        """The message of MSI vector ``n`` as the guest programmed it (data low bits = vector number)."""
        msi = self._msi
        if msi is None or not 0 <= n < len(self._msi_vectors):
            raise FeatureMissing(f"{self.name}: no MSI vector {n}")
        return MsiMessage(msi.address, msi.data | n)

    def msix_message(self, n: int) -> MsiMessage:
        if self.msix_table is None:
            raise FeatureMissing(f"{self.name} has no MSI-X capability")
        return self.msix_table.message(n)

    def _msi_enabled_count(self) -> int:
        if not self._msi.enabled:
            return 0
        return min(self._msi.vectors_enabled, len(self._msi_vectors))

    def _msi_mask_bits(self) -> int:
        return self._msi.mask_bits or 0          # None: not maskable, nothing masked

    def _msix_effective_mask(self, n: int) -> bool:
        return self._msix.function_mask or self.msix_table.masked(n)

    def _notify(self, index: int, n: int) -> None:
        for fn in list(self.route_listeners):
            fn(index, n)

    # ------------------------------------------------------------------ interrupts: kernel programming
    def _program(self, index: int, vectors: list[Vector], start: int = 0) -> None:
        self.device.set_irqs(index, _TRIGGER_EVENTFD, start, len(vectors),
                             uapi.irq_set_data_eventfds([v.kernel_fd() for v in vectors]))

    def _program_intx(self) -> None:
        self.device.set_irqs(_INTX, _TRIGGER_EVENTFD, 0, 1, uapi.irq_set_data_eventfds([self.intx.eventfd.fd]))
        try:
            self.device.set_irqs(_INTX, uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_UNMASK, 0, 1,
                                 uapi.irq_set_data_eventfds([self.intx.resample.fd]))
        except BaseException:
            self.device.disable_irq(_INTX)
            raise

    def _switch(self, mode: IrqMode) -> None:
        """Make ``mode`` the programmed interrupt kind (tearing down the current one)."""
        if self._mode is not IrqMode.NONE:
            self._mode, old = IrqMode.NONE, self._mode
            self.device.disable_irq(old.irq_index)
        if mode is IrqMode.INTX:
            self._program_intx()
        elif mode is IrqMode.MSI:
            n = self._msi_enabled_count()
            self._apply_msi_masks()
            self._program(_MSI, self._msi_vectors[:n])
            self._msi_programmed = n
        elif mode is IrqMode.MSIX:
            self._apply_msix_masks(range(len(self._msix_vectors)))
            self._program(_MSIX, self._msix_vectors)
        self._mode = mode

    def _fallback_mode(self) -> IrqMode:
        return IrqMode.INTX if self._intx_wanted and self.intx is not None else IrqMode.NONE

    def _apply_msi_masks(self) -> list[Vector]:
        """Set each MSI vector's mask from the capability; returns the vectors whose mask changed."""
        bits = self._msi_mask_bits()
        changed = []
        for v in self._msi_vectors:
            m = bool(bits >> v.number & 1)
            if m != v.masked:
                v.masked = m
                changed.append(v)
        return changed

    def _apply_msix_masks(self, numbers) -> list[Vector]:
        changed = []
        for n in numbers:
            v = self._msix_vectors[n]
            m = self._msix_effective_mask(n)
            if m != v.masked:
                v.masked = m
                changed.append(v)
        return changed

    def _reroute(self, index: int, changed: list[Vector], programmed: int) -> None:
        """Point the kernel trigger of each changed vector at its new eventfd (one SET_IRQS for
        several, as at a function-mask toggle); hand pending interrupts of unmasked ones to the guest."""
        inside = [v for v in changed if v.number < programmed]
        if len(inside) > 1:
            vectors = self._msix_vectors if index == _MSIX else self._msi_vectors
            self._program(index, vectors[:programmed])
        elif inside:
            self._program(index, inside, start=inside[0].number)
        for v in changed:
            if not v.masked:
                v.deliver_pending()

    def _msi_written(self, offset: int, size: int, value: int) -> None:
        n = self._msi_enabled_count()
        if n == 0:
            if self._mode is IrqMode.MSI:
                self._switch(self._fallback_mode())
            return
        if self._mode is not IrqMode.MSI or n != self._msi_programmed:
            self._switch(IrqMode.MSI)
        else:
            self._reroute(_MSI, self._apply_msi_masks(), n)
        for v in range(n):
            self._notify(_MSI, v)

    def _msix_control_written(self, offset: int, size: int, value: int) -> None:
        if not self._msix.enabled:
            if self._mode is IrqMode.MSIX:
                self._switch(self._fallback_mode())
            # masks are re-evaluated at the next enable
            return
        if self._mode is not IrqMode.MSIX:
            self._switch(IrqMode.MSIX)
            changed = list(self._msix_vectors)
        else:
            changed = self._apply_msix_masks(range(len(self._msix_vectors)))
            self._reroute(_MSIX, changed, len(self._msix_vectors))
        for v in changed:
            self._notify(_MSIX, v.number)

    def _msix_table_written(self, offset: int, size: int, value: int) -> None:
        touched = self.msix_table.write_table(offset, size, value)
        if not touched:
            return
        if self._mode is IrqMode.MSIX:
            self._reroute(_MSIX, self._apply_msix_masks(touched), len(self._msix_vectors))
        for n in touched:
            self._notify(_MSIX, n)

    def _pba_written(self, offset: int, size: int, value: int) -> None:
        # the PBA is read-only (PCI 3.0 6.8.2.10): the write is dropped, as by the hardware
        MsixTable._check("PBA", offset, size, self.msix_table.pba_bytes)

    # ------------------------------------------------------------------ interrupts: commands
    def enable_intx(self) -> Intx:
        """The VMM connects the INTx line: programmed now unless MSI/MSI-X is enabled (then when they go)."""
        if self.intx is None:
            raise VfioError(errno.EINVAL, f"INTx of {self.name}: the device has no interrupt pin or INTx vector")
        self._intx_wanted = True
        if self._mode is IrqMode.NONE:
            self._switch(IrqMode.INTX)
        return self.intx

    def disable_intx(self) -> None:
        self._intx_wanted = False
        if self._mode is IrqMode.INTX:
            self._switch(IrqMode.NONE)

    def intx_unmask(self) -> None:
        """The guest's EOI of INTx: unmask the line in the kernel (the device fires again if still asserted)."""
        if self._mode is not IrqMode.INTX:
            raise VfioError(errno.EINVAL, f"INTx unmask on {self.name}: INTx is not enabled (mode {self._mode})")
        self.device.unmask_irq(_INTX, 0, 1)

    # ------------------------------------------------------------------ DMA
    def _space(self):
        if self.dma is None:
            raise UnsafeOperationError(f"guest memory for {self.name}: the device has no DMA space (replayed, "
                                       f"or no-IOMMU mode); pass dma= to PassthroughDevice")
        return self.dma

    def map_guest_memory(self, gpa: int, size: int | None = None, *, buffer: DmaBuffer | None = None,
                         memfd: bool = False) -> DmaMapping:
        """Make guest RAM at ``gpa`` DMA-able by the device (IOVA == guest-physical address):
        a new buffer of ``size`` bytes, or ``buffer`` (e.g. the VMM's own guest RAM memfd)."""
        space = self._space()
        if (size is None) == (buffer is None):
            raise InvalidValue("map_guest_memory takes a size or a buffer, not both or neither")
        m = space.alloc(size, iova=gpa, memfd=memfd) if buffer is None else space.map(buffer, iova=gpa)
        self._guest_ram.append(m)
        return m

    def unmap_guest_memory(self, mapping: DmaMapping) -> None:
        self._guest_ram.remove(mapping)
        mapping.unmap()

    def _ram_at(self, gpa: int, length: int) -> tuple[DmaMapping, int]:
        for m in self._guest_ram:
            if m.iova <= gpa and gpa + length <= m.iova + m.size:
                return m, gpa - m.iova
        raise RegionAccessError(f"{self.name}: guest-physical range {gpa:#x}+{length:#x} is not inside "
                                f"mapped guest memory")

    def guest_read(self, gpa: int, length: int) -> bytes:
        m, off = self._ram_at(gpa, length)
        return m.buffer.read(off, length)

    def guest_write(self, gpa: int, data: bytes) -> None:
        m, off = self._ram_at(gpa, len(data))
        m.buffer.write(off, data)

    # ------------------------------------------------------------------ state (accessors)
    def _identity(self) -> dict:
        return {"vendor_id": self.config.read(R.VENDOR_ID, 2), "device_id": self.config.read(R.DEVICE_ID, 2)}

    def get_state(self) -> dict:
        """The model's state as a versioned, JSON-ready dict: virtual config space (with the
        MSI capability), MSI-X table and pending bits, the guest's Command, whether INTx is connected.
        An accessor: no SET_IRQS, no device writes."""
        st = {"format": STATE_FORMAT, "version": STATE_VERSION}
        st.update(self._identity())
        st["config"] = self.config.get_state()
        st["command"] = self._command
        st["intx"] = self._intx_wanted
        st["msi_pending"] = [v.number for v in self._msi_vectors if v.pending]
        if self.msix_table is not None:
            st["msix"] = {"size": self.msix_table.size, "table": self.msix_table.get_state(),
                          "pending": [v.number for v in self._msix_vectors if v.pending]}
        else:
            st["msix"] = None
        return st

    def set_state(self, state: Mapping) -> None:
        """Load :meth:`get_state` output.  Refuses (StateMismatchError, nothing changed) state of another
        format version, device identity, capability set or MSI-X table size.  An accessor: call
        :meth:`resume` afterwards to program the device and interrupts to match."""
        if not isinstance(state, Mapping) or state.get("format") != STATE_FORMAT:
            raise StateMismatchError(f"{self.name}: not a passthrough device state")
        if state.get("version") != STATE_VERSION:
            raise StateMismatchError(f"{self.name}: state version {state.get('version')!r} is not the "
                                     f"supported {STATE_VERSION}")
        for key, mine in self._identity().items():
            if state.get(key) != mine:
                raise StateMismatchError(f"{self.name}: state was saved from a device with {key} "
                                         f"{state.get(key)!r}, this one has {mine:#06x}")
        msix = state.get("msix")
        have = None if self.msix_table is None else self.msix_table.size
        if (msix or {}).get("size") != have:
            raise StateMismatchError(f"{self.name}: state has an MSI-X table of {(msix or {}).get('size')} "
                                     f"vectors, this device {have}")
        try:
            table = bytes.fromhex(msix["table"]) if msix else None
            command = int(state["command"])
            msi_pending = set(state["msi_pending"])
            msix_pending = set(msix["pending"]) if msix else set()
        except (KeyError, TypeError, ValueError) as e:
            raise StateMismatchError(f"{self.name}: malformed passthrough state ({e!r})") from None
        if table is not None and len(table) != self.msix_table.table_bytes:
            raise StateMismatchError(f"{self.name}: saved MSI-X table is {len(table)} bytes, this one "
                                     f"{self.msix_table.table_bytes}")
        self.config.set_state(state["config"])      # validates the layout before changing anything
        if table is not None:
            self.msix_table.set_state(msix["table"])    # length checked above: cannot fail now
        for vecs, pend in ((self._msi_vectors, msi_pending), (self._msix_vectors, msix_pending)):
            for v in vecs:
                v.clear_pending()
                v._pending = v.number in pend
        self._command = command
        self._intx_wanted = bool(state.get("intx"))

    # ------------------------------------------------------------------ commands
    def resume(self) -> None:
        """After :meth:`set_state`: write the guest's Command to the device and program the
        interrupts the loaded state has enabled (MSI-X, else MSI, else INTx if connected)."""
        self._cfg_wr[2](R.COMMAND, self._command)
        if self._msix is not None and self._msix.enabled:
            mode = IrqMode.MSIX
        elif self._msi is not None and self._msi_enabled_count():
            mode = IrqMode.MSI
        else:
            mode = self._fallback_mode()
        # masks of the loaded state decide the routes; force a fresh evaluation
        for v in self._msi_vectors + self._msix_vectors:
            v.masked = True
        self._switch(mode)
        for v in self._msi_vectors + self._msix_vectors:
            if not v.masked:
                v.deliver_pending()

    def reset(self, device_reset: bool = True) -> None:
        """Function reset as a guest (or VMM at system reset) asks for it: interrupts torn down,
        Command's decode, bus master and INTx-disable bits cleared in the device,
        VFIO_DEVICE_RESET (unless ``device_reset`` is False), the emulated state back to power-on
        (BARs, MSI/MSI-X off, every MSI-X vector masked, nothing pending).  INTx is re-programmed
        if the VMM had connected it.  Guest memory mappings stay."""
        if device_reset and not self.device.info.can_reset:
            raise VfioError(errno.ENOTTY, f"function reset of {self.name}: the device has no reset "
                            f"(VFIO_DEVICE_FLAGS_RESET clear); reset(device_reset=False) resets the model only")
        self._switch(IrqMode.NONE)
        # Stop DMA and decoding first, as QEMU's vfio_pci_pre_reset does: the kernel's reset saves
        # and restores the function's config state, so without this the device would come out of
        # reset still decoding and bus mastering, which a guest does not expect of a reset function.
        cmd = self._cfg_rd[2](R.COMMAND)
        self._cfg_wr[2](R.COMMAND, cmd & ~(R.COMMAND_IO | R.COMMAND_MEMORY | R.COMMAND_MASTER
                                           | R.COMMAND_INTX_DISABLE))
        if device_reset:
            self.device.reset()
        self.config.reset()
        if self.msix_table is not None:
            self.msix_table.reset()
        for v in self._msi_vectors + self._msix_vectors:
            v.clear_pending()
            v.masked = True
        self._command = self.config.read(R.COMMAND, 2)
        if self._intx_wanted:
            self._switch(IrqMode.INTX)

    # ------------------------------------------------------------------ migration (commands)
    def save_migration(self, stream, **kw):
        """Save the passed-through device in one call: the model's state (:meth:`get_state`:
        virtual config space, MSI/MSI-X table, the guest's Command) and the device's own
        migration data (:meth:`vfio.migration.Migration.save`: PRE_COPY rounds, then STOP_COPY)
        into one migration stream (the model's state in its ATTACHMENTS record).  The device is
        left in STOP.  ``kw`` goes to ``Migration.save``.  Raises what that raises
        (:class:`~vfio.migration.MigrationUnsupported` for a device without a migration driver)."""
        return self.device.migration.save(stream, attachments={STATE_FORMAT: self.get_state()}, **kw)

    def load_migration(self, stream, **kw):
        """Restore what :meth:`save_migration` wrote, in one call.  The model's state is checked
        and loaded first (:meth:`set_state`'s refusals -- another device identity, capability set
        or MSI-X table size: :class:`StateMismatchError`, model and device untouched), then the
        device data (RESUMING -> STOP), then :meth:`resume` programs Command and interrupts and the
        device goes RUNNING.  If the device data is refused, the model's previous state is put
        back and the error (:mod:`vfio.migration`'s) names the device's migration state."""
        from ..migration import MigState
        old = self.get_state()

        def verify(attachments):
            if not attachments or STATE_FORMAT not in attachments:
                raise StateMismatchError(f"{self.name}: the migration stream has no passthrough model state")
            self.set_state(attachments[STATE_FORMAT])

        try:
            report = self.device.migration.load(stream, end_state=MigState.STOP, verify=verify, **kw)
        except BaseException:
            self.set_state(old)         # our own state: cannot be refused
            raise
        self.resume()
        self.device.migration.set_state(MigState.RUNNING)
        return report

    # ------------------------------------------------------------------ lifetime
    def _release(self) -> None:
        for b in self.bars.values():
            b.close()
        self.bars = {}
        for v in self._msi_vectors + self._msix_vectors:
            v.close()
        if self.intx is not None:
            self.intx.close()
        if self._owns_device:
            self.device.close()

    def close(self) -> None:
        """Tear down interrupts and guest memory mappings, close eventfds and BAR mappings
        (and the device, when owned).  Errors of the teardown are raised after everything is released."""
        if self._closed:
            return
        self._closed = True
        first = None
        if not self.device.closed:
            try:
                if self._mode is not IrqMode.NONE:
                    self._mode, old = IrqMode.NONE, self._mode
                    self.device.disable_irq(old.irq_index)
            except Exception as e:  # still release fds and mappings, then report
                first = e
            while self._guest_ram:
                try:
                    self._guest_ram.pop().unmap()
                except Exception as e:
                    first = first or e
        try:
            self._release()
        finally:
            if first is not None:
                raise first

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __repr__(self) -> str:
        return (f"PassthroughDevice({self.name!r}, BARs {sorted(self.bars)}, irq mode {self._mode}, "
                f"MSI {len(self._msi_vectors)} MSI-X {len(self._msix_vectors)})")
