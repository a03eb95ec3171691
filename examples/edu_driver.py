#!/usr/bin/env python3
"""A driver for QEMU's ``edu`` teaching device, written as a guest OS would drive it when passed through.

Everything goes through :class:`vfio.pci.passthrough.PassthroughDevice`: the
script programs BAR0 and the Command register in the virtual config space,
enables MSI in the virtual capability (the model turns that into
``VFIO_DEVICE_SET_IRQS``), reaches the registers by guest-physical MMIO, and
maps "guest RAM" for DMA at IOVA == guest-physical address.

edu (QEMU docs/specs/edu.rst): BAR0 identification 0x010000ed at 0x00;
liveness at 0x04 returns the inverse; factorial at 0x08, with status 0x20 bit 7
asking for an interrupt at completion; interrupt status 0x24, raise 0x60,
acknowledge 0x64; DMA source 0x80, destination 0x88, count 0x90, command 0x98
(bit 0 run, bit 1 edu->RAM, bit 2 interrupt when done); the DMA buffer inside
the device is 4 KiB at 0x40000; DMA addresses are 28 bits; only 4- and 8-byte
accesses.

A transfer must fit edu's buffer, and QEMU does not fail it politely: an
out-of-bounds one stops the whole VM (``hw_error("EDU: DMA range ... out of
bounds")``).  QEMU up to 7.2 also demands that the transfer's *end*
(start + count) lie inside the buffer, so a transfer starting at 0x40000 moves
at most 4095 bytes there, and never 0.  This driver refuses a transfer outside
1..4095 bytes before touching the device.

Usage (as root, edu bound to vfio-pci)::

    python3 examples/edu_driver.py 0000:00:04.0 [--factorial 10] [--dma-bytes 1024]

or, on any host, against the Python model of edu (:mod:`vfio.models.edu`) with
the same driver code: ``python3 examples/edu_driver.py --model``.
"""

from __future__ import annotations

import argparse
import sys

from vfio.pci import regs as R
from vfio.pci.passthrough import PassthroughDevice

BAR0_GPA = 0xE010_0000
RAM_GPA = 0x30_0000                 # inside edu's 28-bit DMA mask
EDU_ID = 0x010000ED
ID, LIVENESS, FACTORIAL, STATUS, IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
STATUS_IRQ_ON_DONE = 0x80
DMA_RUN, DMA_TO_RAM, DMA_IRQ = 0x1, 0x2, 0x4
DMA_IRQ_BIT = 0x100                 # edu's interrupt status bit for DMA completion
EDU_BUFFER = 0x40000
# edu checks start <= end < buffer end with end = start + count (QEMU <= 7.2; later
# versions accept 4096), so from the buffer's start at most 4095 bytes, and at least 1
EDU_DMA_MAX = 4095


class EduError(RuntimeError):
    pass


class Edu:
    def __init__(self, pt: PassthroughDevice, timeout: float = 10.0):
        self.pt, self.timeout = pt, timeout
        if pt.config_read(R.VENDOR_ID, 4) != 0x11E81234:
            raise EduError(f"{pt.name} is not an edu device")
        pt.config_write(R.BASE_ADDRESS_0, 4, BAR0_GPA)
        pt.config_write(R.COMMAND, 2, pt.config_read(R.COMMAND, 2) | R.COMMAND_MEMORY | R.COMMAND_MASTER)
        if self.r32(ID) != EDU_ID:
            raise EduError(f"identification register reads {self.r32(ID):#x}")
        self.msi = self._enable_msi()

    def r32(self, reg: int) -> int:
        return self.pt.mmio_read(BAR0_GPA + reg, 4)

    def w32(self, reg: int, value: int) -> None:
        self.pt.mmio_write(BAR0_GPA + reg, 4, value)

    def r64(self, reg: int) -> int:
        return self.pt.mmio_read(BAR0_GPA + reg, 8)

    def w64(self, reg: int, value: int) -> None:
        self.pt.mmio_write(BAR0_GPA + reg, 8, value)

    def _enable_msi(self):
        off = self.pt.config.find_capability(R.CAP_ID_MSI)
        if off is None:
            raise EduError("no MSI capability")
        ctl = self.pt.config_read(off + R.MSI_FLAGS, 2)
        data_reg = R.MSI_DATA_64 if ctl & R.MSI_FLAGS_64BIT else R.MSI_DATA_32
        self.pt.config_write(off + R.MSI_ADDRESS_LO, 4, 0xFEE00000)
        self.pt.config_write(off + data_reg, 2, 0x31)
        self.pt.config_write(off + R.MSI_FLAGS, 2, ctl | R.MSI_FLAGS_ENABLE)
        return self.pt.msi_vector(0).eventfd

    def _wait_irq(self, bit: int, what: str) -> int:
        if not self.msi.wait(self.timeout):
            raise EduError(f"no MSI for {what} within {self.timeout} s")
        st = self.r32(IRQ_STATUS)
        self.w32(IRQ_ACK, st)
        if not st & bit:
            raise EduError(f"MSI for {what} but interrupt status {st:#x} lacks {bit:#x}")
        return st

    def liveness(self, value: int) -> int:
        self.w32(LIVENESS, value)
        return self.r32(LIVENESS)

    def factorial(self, n: int) -> int:
        self.w32(STATUS, STATUS_IRQ_ON_DONE)
        self.w32(FACTORIAL, n)
        self._wait_irq(0x1, "factorial")
        self.w32(STATUS, 0)
        return self.r32(FACTORIAL)

    def raise_irq(self, bits: int) -> int:
        self.w32(IRQ_RAISE, bits)
        return self._wait_irq(bits, "irq raise")

    def dma_round_trip(self, data: bytes) -> bytes:
        """RAM -> edu buffer (polled), edu buffer -> RAM (interrupt at completion); returns what came back."""
        check_dma_size(len(data))
        ram = self.pt.map_guest_memory(RAM_GPA, 0x2000)
        try:
            self.pt.guest_write(RAM_GPA, data)
            self._dma(RAM_GPA, EDU_BUFFER, len(data), DMA_RUN)
            while self.r64(DMA_CMD) & DMA_RUN:
                pass
            self._dma(EDU_BUFFER, RAM_GPA + 0x1000, len(data), DMA_RUN | DMA_TO_RAM | DMA_IRQ)
            self._wait_irq(DMA_IRQ_BIT, "DMA completion")
            return self.pt.guest_read(RAM_GPA + 0x1000, len(data))
        finally:
            self.pt.unmap_guest_memory(ram)

    def _dma(self, src: int, dst: int, count: int, cmd: int) -> None:
        self.w64(DMA_SRC, src)
        self.w64(DMA_DST, dst)
        self.w64(DMA_COUNT, count)
        self.w64(DMA_CMD, cmd)


def check_dma_size(n: int) -> None:
    """Refuse a DMA edu would stop the VM for (see the module docstring)."""
    if not 1 <= n <= EDU_DMA_MAX:
        raise EduError(f"a DMA of {n} bytes: edu moves 1 to {EDU_DMA_MAX} bytes to or from its buffer "
                       f"at {EDU_BUFFER:#x} (QEMU stops the VM on anything else)")


def open_edu(bdf: str | None) -> PassthroughDevice:
    """The edu at ``bdf``, or (None) a model of it served by vfio.model."""
    if bdf is not None:
        return PassthroughDevice.open(bdf)
    from vfio.model import open_model_device
    from vfio.models.edu import EduModel
    dev = open_model_device(EduModel())
    try:
        return PassthroughDevice(dev, owns_device=True)
    except BaseException:
        dev.close()
        raise


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bdf", nargs="?", help="PCI address of the edu device, bound to vfio-pci")
    ap.add_argument("--model", action="store_true",
                    help="drive vfio.models.edu.EduModel instead of a device (no VFIO needed)")
    ap.add_argument("--factorial", type=int, default=10, metavar="N")
    ap.add_argument("--dma-bytes", type=int, default=1024, metavar="N",
                    help=f"size of the DMA round trip, 1 to {EDU_DMA_MAX} (default 1024)")
    ap.add_argument("--timeout", type=float, default=10.0)
    args = ap.parse_args(argv)
    if (args.bdf is None) == (not args.model):
        ap.error("give the edu device's PCI address or --model (one of them)")
    name = args.bdf or "model"
    try:
        check_dma_size(args.dma_bytes)
        with open_edu(args.bdf) as pt:
            edu = Edu(pt, args.timeout)
            live = edu.liveness(0x12345678)
            fact = edu.factorial(args.factorial)
            pattern = bytes((i * 7 + 3) & 0xFF for i in range(args.dma_bytes))
            back = edu.dma_round_trip(pattern)
    except (EduError, OSError, ValueError) as e:
        print(f"edu_driver: {name}: {e}", file=sys.stderr)
        return 1
    print(f"liveness: {live:#010x}")
    print(f"factorial({args.factorial}): {fact}")
    print(f"dma: {'ok' if back == pattern else 'MISMATCH'} ({len(back)} bytes)")
    return 0 if back == pattern and live == (~0x12345678 & 0xFFFFFFFF) else 1


if __name__ == "__main__":
    sys.exit(main())
