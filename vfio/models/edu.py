"""QEMU's ``edu`` teaching device as a :class:`vfio.model.DeviceModel`.

The behaviour is that of QEMU's ``hw/misc/edu.c`` (7.2, the QEMU the toolkit's
guest tests run on; spec: ``docs/specs/edu.rst``), register by register:

* BAR0, 1 MiB, 32-bit memory.  0x00 identification ``0x010000ed``; 0x04
  liveness (reads the inverse of what was written); 0x08 factorial (a write
  starts it unless one is running; reads the result, 32-bit wrapping); 0x20
  status (bit 0 computing, bit 7 raise interrupt 0x1 when the factorial is
  done; only bit 7 is writable); 0x24 interrupt status; 0x60 raise (ORs the
  value into the status and interrupts), 0x64 acknowledge (clears those bits;
  INTx is deasserted when nothing is left); 0x80/0x88/0x90/0x98 DMA source,
  destination, count, command (bit 0 run, bit 1 edu -> RAM, bit 2 interrupt
  0x100 at completion); a write to them while a transfer runs is ignored, and a
  command write without bit 0 does nothing.
* Access widths, as QEMU's memory core applies the device's ``.valid``
  (4 to 8 bytes, aligned) and edu's own checks: a 1- or 2-byte or unaligned
  access is refused before the device sees it -- it reads 0 and a write is
  dropped; below 0x80 only 4 bytes work (an 8-byte read there is all ones, a
  write dropped); from 0x80, 4 and 8; a register edu does not decode reads all
  ones.
* Interrupts: MSI when the driver enabled it, INTx (level) otherwise.
* DMA between memory and the device's 4 KiB buffer at 0x40000, through the
  IOMMU (the model's :meth:`~vfio.model.DeviceModel.dma_read` /
  ``dma_write``); the memory address is clamped to the 28-bit DMA mask as QEMU
  clamps it.  The buffer range must satisfy QEMU 7.2's check: start inside the
  buffer, count at least 1 and ``start + count`` *below* the buffer's end (so
  4095 bytes at most from 0x40000).

Where this model differs from QEMU, on purpose:

* The factorial and DMA complete within the register write that starts them
  (QEMU uses a thread and a 100 ms timer), so status bit 0 and command bit 0
  are never seen set; a driver that polls them works on both.
* Where QEMU stops the whole VM (``hw_error("EDU: DMA range ... out of
  bounds")``) the model raises :class:`EduHwError` from that register write,
  and a DMA to an IOVA the IOMMU has no mapping for raises
  :class:`vfio.model.DmaFault` (in QEMU the IOMMU logs a fault and the
  transfer completes without moving anything: a read from memory leaves edu's
  buffer as it was, a write to memory is dropped).

Usage::

    from vfio.model import open_model_device
    from vfio.models.edu import EduModel

    with open_model_device(EduModel()) as dev:
        bar = dev.region(0)
        bar.write32(0x08, 5)                         # factorial of 5
        assert bar.read32(0x08) == 120
"""

from __future__ import annotations

from .. import uapi
from ..errors import Error
from ..model import DeviceModel

VENDOR_ID, DEVICE_ID = 0x1234, 0x11E8
EDU_ID = 0x010000ED
BAR_SIZE = 1 << 20
DMA_START, DMA_SIZE = 0x40000, 4096
DMA_MASK = (1 << 28) - 1
STATUS_COMPUTING, STATUS_IRQFACT = 0x01, 0x80
FACT_IRQ, DMA_IRQ = 0x001, 0x100
DMA_RUN, DMA_TO_RAM, DMA_IRQ_ON_DONE = 0x1, 0x2, 0x4
_ALL_ONES = (1 << 64) - 1


class EduHwError(Error, RuntimeError):
    """What QEMU's edu stops the VM for (``hw_error``)."""


def edu_config() -> bytes:
    """edu's config space as QEMU 7.2 builds it (BAR0 unassigned, Command 0): 1234:11e8 rev
    0x10, class 0x00ff00, subsystem 1af4:1100, INTA, a 64-bit MSI capability at 0x40."""
    c = bytearray(256)
    c[0x00:0x04] = (VENDOR_ID | DEVICE_ID << 16).to_bytes(4, "little")
    c[0x06] = 0x10                               # status: capability list
    c[0x08:0x0C] = bytes((0x10, 0x00, 0xFF, 0x00))
    c[0x2C:0x30] = (0x1AF4 | 0x1100 << 16).to_bytes(4, "little")
    c[0x34] = 0x40
    c[0x3D] = 1                                  # interrupt pin INTA
    c[0x40:0x44] = bytes((0x05, 0x00, 0x80, 0x00))   # MSI, last, 64-bit, 1 vector
    return bytes(c)


class EduModel(DeviceModel):
    """QEMU's edu (see the module docstring)."""

    name = "edu"
    bars = {0: BAR_SIZE}

    def __init__(self):
        self.config = edu_config()
        self.reset()

    def reset(self) -> None:
        self.addr4 = 0
        self.fact = 0
        self.status = 0
        self.irq_status = 0
        self.dma_src = self.dma_dst = self.dma_cnt = self.dma_cmd = 0
        self.dma_buf = bytearray(DMA_SIZE)

    # ---- registers ---------------------------------------------------------------
    @staticmethod
    def _valid(offset: int, size: int) -> bool:
        return size in (4, 8) and offset % size == 0       # QEMU's .valid: 4..8 bytes, aligned

    def read(self, bar: int, offset: int, size: int) -> int:
        if not self._valid(offset, size):
            return 0                                       # memory core: unassigned_mem_read
        mask = (1 << 8 * size) - 1
        if offset < 0x80 and size != 4:
            return _ALL_ONES & mask
        val = {0x00: EDU_ID, 0x04: self.addr4, 0x08: self.fact, 0x20: self.status,
               0x24: self.irq_status, 0x80: self.dma_src, 0x88: self.dma_dst, 0x90: self.dma_cnt,
               0x98: self.dma_cmd}.get(offset, _ALL_ONES)
        return val & mask

    def write(self, bar: int, offset: int, size: int, value: int) -> None:
        if not self._valid(offset, size) or (offset < 0x80 and size != 4):
            return
        if offset == 0x04:
            self.addr4 = ~value & 0xFFFFFFFF
        elif offset == 0x08:
            if not self.status & STATUS_COMPUTING:
                self._factorial(value)
        elif offset == 0x20:
            self.status = (self.status | STATUS_IRQFACT) if value & STATUS_IRQFACT \
                else self.status & ~STATUS_IRQFACT
        elif offset == 0x60:
            self._raise(value)
        elif offset == 0x64:
            self._lower(value)
        elif offset in (0x80, 0x88, 0x90) and not self.dma_cmd & DMA_RUN:
            setattr(self, {0x80: "dma_src", 0x88: "dma_dst", 0x90: "dma_cnt"}[offset], value)
        elif offset == 0x98 and value & DMA_RUN and not self.dma_cmd & DMA_RUN:
            self.dma_cmd = value
            self._dma()

    # ---- behaviour -----------------------------------------------------------------
    def _factorial(self, n: int) -> None:
        n &= 0xFFFFFFFF                       # edu.c keeps it in a uint32_t
        ret = 1
        while n > 0:
            ret = ret * n & 0xFFFFFFFF
            n -= 1
        self.fact = ret
        if self.status & STATUS_IRQFACT:
            self._raise(FACT_IRQ)

    def _raise(self, bits: int) -> None:
        self.irq_status |= bits & 0xFFFFFFFF
        if self.irq_status:
            if self.msi_enabled():
                self.raise_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
            else:
                self.raise_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)

    def _lower(self, bits: int) -> None:
        self.irq_status &= ~bits & 0xFFFFFFFF
        if not self.irq_status and not self.msi_enabled():
            self.lower_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)

    @staticmethod
    def _check_range(addr: int, count: int) -> None:
        end = addr + count
        if DMA_START <= addr < DMA_START + DMA_SIZE and end > addr and DMA_START <= end < DMA_START + DMA_SIZE:
            return
        raise EduHwError(f"EDU: DMA range {addr:#018x}-{(end - 1) & _ALL_ONES:#018x} out of bounds "
                         f"({DMA_START:#018x}-{DMA_START + DMA_SIZE - 1:#018x})! (QEMU stops the VM here)")

    def _dma(self) -> None:
        cnt = self.dma_cnt
        try:
            if self.dma_cmd & DMA_TO_RAM:
                self._check_range(self.dma_src, cnt)
                at = self.dma_src - DMA_START
                self.dma_write(self.dma_dst & DMA_MASK, bytes(self.dma_buf[at:at + cnt]))
            else:
                self._check_range(self.dma_dst, cnt)
                at = self.dma_dst - DMA_START
                self.dma_buf[at:at + cnt] = self.dma_read(self.dma_src & DMA_MASK, cnt)
        finally:
            self.dma_cmd &= ~DMA_RUN          # a failed transfer leaves the engine idle, not stuck
        if self.dma_cmd & DMA_IRQ_ON_DONE:
            self._raise(DMA_IRQ)
