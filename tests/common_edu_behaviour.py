"""QEMU edu's behaviour as a driver sees it through the toolkit: one set of tests
for the real edu (tests/kernel/test_model_edu_real.py, in the guest) and for
:class:`vfio.models.edu.EduModel` (tests/unit/test_model_edu.py, on the host).

A module that imports these tests provides an ``edu_dev`` fixture: an open
:class:`vfio.device.Device` of an edu with a DMA space, bus mastering on.  What
differs between the two (a DMA to an unmapped IOVA) is tested in each file; the
helpers for it live here.
"""

from __future__ import annotations

import time

import pytest

from vfio import uapi

ID, LIVENESS, FACTORIAL, STATUS, IRQ_STATUS, IRQ_RAISE, IRQ_ACK = 0x00, 0x04, 0x08, 0x20, 0x24, 0x60, 0x64
DMA_SRC, DMA_DST, DMA_COUNT, DMA_CMD = 0x80, 0x88, 0x90, 0x98
DMA_BUF = 0x40000
DMA_LIMIT = 1 << 28
MSI, INTX = uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_PCI_INTX_IRQ_INDEX
TIMEOUT = 10.0
QUIET = 0.3          # how long "no interrupt" is watched for


def wait_idle(bar, timeout: float = TIMEOUT) -> int:
    """Poll the DMA command register until the run bit clears; returns the command."""
    t0 = time.monotonic()
    while (cmd := bar.read64(DMA_CMD)) & 1:
        assert time.monotonic() - t0 < timeout, "edu DMA did not complete"
        time.sleep(0.002)
    return cmd


def dma(bar, src: int, dst: int, n: int, to_ram: bool = False, irq: bool = False) -> int:
    bar.write64(DMA_SRC, src)
    bar.write64(DMA_DST, dst)
    bar.write64(DMA_COUNT, n)
    bar.write64(DMA_CMD, 1 | (2 if to_ram else 0) | (4 if irq else 0))
    return wait_idle(bar)


def ack_all(bar) -> None:
    bar.write32(IRQ_ACK, bar.read32(IRQ_STATUS))


def unmapped_iova(dev) -> int:
    """An IOVA inside edu's DMA mask that nothing is mapped at (mapped once, then unmapped)."""
    m = dev.dma.alloc(0x1000, limit=DMA_LIMIT)
    iova = m.iova
    m.unmap()
    return iova


def test_identification_and_config(edu_dev):
    assert edu_dev.region(0).read32(ID) == 0x010000ED
    assert edu_dev.config.read32(0) == 0x11E81234
    assert edu_dev.region(0).size == 1 << 20
    assert edu_dev.irq_info(MSI).count == 1 and edu_dev.irq_info(INTX).count == 1


def test_liveness_inverts(edu_dev):
    bar = edu_dev.region(0)
    for v in (0x12345678, 0, 0xFFFFFFFF, 0xA5A5A5A5):
        bar.write32(LIVENESS, v)
        assert bar.read32(LIVENESS) == ~v & 0xFFFFFFFF


def test_access_widths(edu_dev):
    """edu decodes 4- and 8-byte accesses: an 8-byte access below 0x80 reads all
    ones and is dropped when written, an undecoded register reads all ones."""
    bar = edu_dev.region(0)
    bar.write32(LIVENESS, 0x11223344)
    assert bar.read64(ID) == (1 << 64) - 1
    assert bar.read32(0x0C) == 0xFFFFFFFF
    bar.write64(0x00, 0)
    assert bar.read32(LIVENESS) == ~0x11223344 & 0xFFFFFFFF
    bar.write64(DMA_COUNT, 0x1_0000_0123)
    assert bar.read64(DMA_COUNT) == 0x1_0000_0123 and bar.read32(DMA_COUNT) == 0x123


@pytest.mark.x86_bus
def test_refused_widths(edu_dev):
    """QEMU refuses 1-/2-byte accesses to edu (its .valid sizes are 4 and 8): on x86
    a refused read gives 0 and a refused write is dropped.  (On arm64 the same
    access is a bus error, a synchronous external abort: see the x86_bus marker.)"""
    bar = edu_dev.region(0)
    bar.write32(LIVENESS, 0x11223344)
    assert bar.read8(ID) == 0 and bar.read16(ID) == 0
    bar.write8(LIVENESS, 0x55)
    bar.write16(LIVENESS, 0x5555)
    assert bar.read32(LIVENESS) == ~0x11223344 & 0xFFFFFFFF


def test_factorial_interrupts_through_msi(edu_dev):
    bar = edu_dev.region(0)
    with edu_dev.enable_irq(MSI) as vec:
        ack_all(bar)
        bar.write32(STATUS, 0x80)
        bar.write32(FACTORIAL, 10)
        assert vec.eventfds[0].wait(TIMEOUT) == 1
        assert bar.read32(IRQ_STATUS) == 0x1
        assert bar.read32(FACTORIAL) == 3628800
        assert bar.read32(STATUS) & 0x1 == 0          # not computing any more
        ack_all(bar)
        bar.write32(STATUS, 0)
        bar.write32(FACTORIAL, 13)                    # 13! wraps at 32 bits, as edu's uint32_t does
        t0 = time.monotonic()
        while bar.read32(STATUS) & 0x1:
            assert time.monotonic() - t0 < TIMEOUT
        assert bar.read32(FACTORIAL) == 6227020800 & 0xFFFFFFFF
        assert vec.eventfds[0].wait(QUIET) == 0       # no interrupt without status bit 7
        assert bar.read32(IRQ_STATUS) == 0


def test_raise_and_acknowledge_msi(edu_dev):
    bar = edu_dev.region(0)
    with edu_dev.enable_irq(MSI) as vec:
        ack_all(bar)
        bar.write32(IRQ_RAISE, 0x1234)
        assert vec.eventfds[0].wait(TIMEOUT) == 1
        bar.write32(IRQ_RAISE, 0x8000)
        assert vec.eventfds[0].wait(TIMEOUT) == 1     # every raise is a message
        assert bar.read32(IRQ_STATUS) == 0x9234
        bar.write32(IRQ_ACK, 0x1200)
        assert bar.read32(IRQ_STATUS) == 0x8034
        ack_all(bar)
        assert bar.read32(IRQ_STATUS) == 0
        assert vec.eventfds[0].wait(QUIET) == 0


def test_intx_is_level_and_automasked(edu_dev):
    """vfio-pci masks INTx at each interrupt; a line still asserted at unmask fires again."""
    bar = edu_dev.region(0)
    with edu_dev.enable_irq(INTX) as vec:
        ack_all(bar)
        efd = vec.eventfds[0]
        bar.write32(IRQ_RAISE, 0x1)
        assert efd.wait(TIMEOUT) == 1
        bar.write32(IRQ_RAISE, 0x2)                   # masked now: nothing
        assert efd.wait(QUIET) == 0
        edu_dev.unmask_irq(INTX)                      # still asserted: fires again
        assert efd.wait(TIMEOUT) == 1
        ack_all(bar)                                  # deasserted
        edu_dev.unmask_irq(INTX)
        assert efd.wait(QUIET) == 0
        bar.write32(IRQ_RAISE, 0x4)
        assert efd.wait(TIMEOUT) == 1
        ack_all(bar)
        edu_dev.unmask_irq(INTX)


def test_dma_round_trip_with_completion_interrupt(edu_dev):
    bar = edu_dev.region(0)
    n = 1024
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(n))
    with edu_dev.dma.alloc(0x2000, limit=DMA_LIMIT) as m, edu_dev.enable_irq(MSI) as vec:
        ack_all(bar)
        m.write(0, pattern)
        m.write(0x1000, bytes(n))
        assert dma(bar, m.iova, DMA_BUF, n) == 0              # RAM -> edu, polled
        cmd = dma(bar, DMA_BUF + 0, m.iova + 0x1000, n, to_ram=True, irq=True)
        assert cmd == 0x6                                     # run bit cleared, the rest kept
        assert vec.eventfds[0].wait(TIMEOUT) == 1
        assert bar.read32(IRQ_STATUS) == 0x100
        ack_all(bar)
        assert m.read(0x1000, n) == pattern
        # a part of the buffer, back to another place
        dma(bar, DMA_BUF + 0x10, m.iova + 0x1800, 0x20, to_ram=True)
        assert m.read(0x1800, 0x20) == pattern[0x10:0x30]
        assert vec.eventfds[0].wait(QUIET) == 0               # no interrupt without command bit 2


def test_largest_dma_from_the_buffer_start(edu_dev):
    """QEMU 7.2's check: start + count must stay below the buffer's end: 4095 bytes at most."""
    bar = edu_dev.region(0)
    data = bytes((i * 31 + 7) & 0xFF for i in range(4095))
    with edu_dev.dma.alloc(0x2000, limit=DMA_LIMIT) as m:
        m.write(0, data)
        dma(bar, m.iova, DMA_BUF, 4095)
        dma(bar, DMA_BUF, m.iova + 0x1000, 4095, to_ram=True)
        assert m.read(0x1000, 4095) == data
