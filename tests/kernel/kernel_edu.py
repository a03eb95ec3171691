"""QEMU's edu device, as the real-kernel tests drive it (docs/specs/edu.rst in QEMU).

BAR0 registers: 0x00 id (0x010000ed), 0x04 liveness (reads back the inverse),
0x08 factorial, 0x20 status (bit 7: interrupt on factorial completion),
0x24 interrupt status, 0x60 raise, 0x64 acknowledge, 0x80/0x88/0x90/0x98 DMA
source/destination/count/command (bit 0 run, bit 1 edu->RAM, bit 2 interrupt
0x100 on completion).  Only 4-byte (and, from 0x80, 8-byte) accesses work.  The
DMA engine copies between RAM and its own 4 KiB buffer at 0x40000, and its DMA
mask is 28 bits.
"""

from __future__ import annotations

import time

ID = 0x010000ED
DMA_BUF = 0x40000
DMA_MASK = 1 << 28
PCI_COMMAND = 0x04
PCI_COMMAND_MASTER = 0x4


def bus_master(dev) -> int:
    """vfio-pci leaves bus mastering off; DMA and MSI are dropped until it is set.
    Sets it with the public API; returns the Command register as read back."""
    dev.enable_bus_master()
    return dev.config.read16(PCI_COMMAND)


def dma(bar, src: int, dst: int, n: int, to_ram: bool = False, irq: bool = False, timeout: float = 10) -> None:
    bar.write64(0x80, src)
    bar.write64(0x88, dst)
    bar.write64(0x90, n)
    bar.write64(0x98, 1 | (2 if to_ram else 0) | (4 if irq else 0))
    t0 = time.monotonic()
    while bar.read64(0x98) & 1:
        if time.monotonic() - t0 > timeout:
            raise AssertionError("edu DMA did not complete")
        time.sleep(0.002)


def round_trip(bar, mapping, n: int = 1024) -> bool:
    """RAM (mapping) -> edu buffer -> RAM (mapping + 4 KiB); True if the data came back."""
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(n))
    mapping.buffer.write(0, pattern)
    mapping.buffer.write(0x1000, bytes(n))
    dma(bar, mapping.iova, DMA_BUF, n)
    dma(bar, DMA_BUF, mapping.iova + 0x1000, n, to_ram=True)
    return mapping.buffer.read(0x1000, n) == pattern
