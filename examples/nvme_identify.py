#!/usr/bin/env python3
"""A minimal userspace NVMe driver, written as a guest OS would drive a passed-through controller.

Everything goes through :class:`vfio.pci.passthrough.PassthroughDevice`, the
model a VMM shows a guest: this script is the "guest".  It

1. sizes BAR0 and programs it at a guest-physical address through the virtual
   config space, and sets Memory Space + Bus Master in the Command register
   (vfio-pci leaves bus mastering off; without it DMA and MSI-X are dropped);
2. maps three pages of "guest RAM" for DMA (IOVA == guest-physical address):
   admin submission queue, admin completion queue, Identify data;
3. enables MSI-X in the virtual capability and programs table entry 0 through
   the trapped BAR page, so completions arrive on vector 0's eventfd;
4. resets and enables the controller (CC/CSTS, AQA/ASQ/ACQ), submits Identify
   Controller (opcode 0x06, CNS 1), waits for the MSI-X interrupt, checks the
   completion entry and prints the serial number and model.

Usage (as root, the controller bound to vfio-pci)::

    python3 examples/nvme_identify.py 0000:00:05.0

Output: ``serial: <SN>`` and ``model: <MN>`` lines; exit status 0 on success.
"""

from __future__ import annotations

import argparse
import struct
import sys
import time

from vfio.pci import regs as R
from vfio.pci.passthrough import PassthroughDevice

BAR0_GPA = 0xE000_0000          # where this "guest" puts the controller's registers
RAM_GPA = 0x20_0000             # guest RAM for the admin queues and the Identify buffer
QUEUE_ENTRIES = 16

# controller registers (NVMe 1.4, section 3.1)
CAP, VS, CC, CSTS, AQA, ASQ, ACQ = 0x00, 0x08, 0x14, 0x1C, 0x24, 0x28, 0x30
DOORBELLS = 0x1000
OPC_IDENTIFY, CNS_CONTROLLER = 0x06, 1


class NvmeError(RuntimeError):
    pass


class Controller:
    """Register access through guest-physical MMIO, as the guest's CPU would do it."""

    def __init__(self, pt: PassthroughDevice, base: int):
        self.pt, self.base = pt, base

    def r32(self, reg: int) -> int:
        return self.pt.mmio_read(self.base + reg, 4)

    def w32(self, reg: int, value: int) -> None:
        self.pt.mmio_write(self.base + reg, 4, value)

    def r64(self, reg: int) -> int:
        return self.pt.mmio_read(self.base + reg, 8)

    def w64(self, reg: int, value: int) -> None:
        self.pt.mmio_write(self.base + reg, 8, value)

    def wait_ready(self, ready: bool, timeout_ms: int) -> None:
        deadline = time.monotonic() + timeout_ms / 1000
        while bool(self.r32(CSTS) & 1) != ready:
            if self.r32(CSTS) & 2:
                raise NvmeError(f"controller fatal status (CSTS {self.r32(CSTS):#x})")
            if time.monotonic() > deadline:
                raise NvmeError(f"CSTS.RDY did not become {int(ready)} within {timeout_ms} ms")
            time.sleep(0.005)


def program_bar0(pt: PassthroughDevice) -> None:
    """BAR sizing and assignment through the virtual config space, then decode + bus master on."""
    pt.config_write(R.BASE_ADDRESS_0, 4, 0xFFFFFFFF)
    size = (~pt.config_read(R.BASE_ADDRESS_0, 4) & 0xFFFFFFF0) + 1
    if size > 0x10000:
        raise NvmeError(f"unexpected BAR0 size {size:#x}")
    pt.config_write(R.BASE_ADDRESS_0, 4, BAR0_GPA)
    if pt.bar(0).kind == "mem64":
        pt.config_write(R.BASE_ADDRESS_0 + 4, 4, 0)
    pt.config_write(R.COMMAND, 2, pt.config_read(R.COMMAND, 2) | R.COMMAND_MEMORY | R.COMMAND_MASTER)


def enable_msix_vector0(pt: PassthroughDevice) -> None:
    """MSI-X on with entry 0 unmasked: the guest's writes to the capability and the trapped table."""
    off = pt.config.find_capability(R.CAP_ID_MSIX)
    if off is None:
        raise NvmeError("the controller shows no MSI-X capability")
    table = pt.config_read(off + R.MSIX_TABLE, 4)
    bir, toff = table & R.MSIX_TABLE_BIR, table & R.MSIX_TABLE_OFFSET
    if bir != 0:
        raise NvmeError(f"MSI-X table in BAR{bir}: this driver only maps BAR0")
    ctl = pt.config_read(off + R.MSIX_FLAGS, 2)
    pt.config_write(off + R.MSIX_FLAGS, 2, (ctl | R.MSIX_FLAGS_ENABLE) & ~R.MSIX_FLAGS_MASKALL)
    entry = BAR0_GPA + toff
    pt.mmio_write(entry + 0, 4, 0xFEE00000)     # message address: LAPIC 0 (a VMM routes the irqfd with it)
    pt.mmio_write(entry + 4, 4, 0)
    pt.mmio_write(entry + 8, 4, 0x30)           # message data: vector 0x30
    pt.mmio_write(entry + 12, 4, 0)             # unmask


def identify(pt: PassthroughDevice, timeout: float = 10.0) -> tuple[str, str, int]:
    """Enable the controller, send Identify Controller; returns (serial, model, PCI vendor ID)."""
    program_bar0(pt)
    ram = pt.map_guest_memory(RAM_GPA, 0x3000)
    asq, acq, data = RAM_GPA, RAM_GPA + 0x1000, RAM_GPA + 0x2000
    enable_msix_vector0(pt)
    ctrl = Controller(pt, BAR0_GPA)
    cap = ctrl.r64(CAP)
    dstrd = (cap >> 32) & 0xF
    timeout_ms = ((cap >> 24) & 0xFF) * 500 or 1000
    ctrl.w32(CC, 0)                                             # disable, wait for RDY=0
    ctrl.wait_ready(False, timeout_ms)
    ctrl.w32(AQA, (QUEUE_ENTRIES - 1) << 16 | (QUEUE_ENTRIES - 1))
    ctrl.w64(ASQ, asq)
    ctrl.w64(ACQ, acq)
    ctrl.w32(CC, 1 | 6 << 16 | 4 << 20)                         # EN, IOSQES 64 B, IOCQES 16 B, MPS 4 KiB
    ctrl.wait_ready(True, timeout_ms)

    cid = 0x42
    cmd = bytearray(64)
    struct.pack_into("<BBH", cmd, 0, OPC_IDENTIFY, 0, cid)
    struct.pack_into("<Q", cmd, 24, data)                       # PRP1
    struct.pack_into("<I", cmd, 40, CNS_CONTROLLER)
    pt.guest_write(asq, bytes(cmd))
    ctrl.w32(DOORBELLS, 1)                                      # admin SQ tail = 1
    if not pt.msix_vector(0).eventfd.wait(timeout):
        raise NvmeError(f"no MSI-X interrupt on vector 0 within {timeout} s (CSTS {ctrl.r32(CSTS):#x})")
    dw3, = struct.unpack("<I", pt.guest_read(acq + 12, 4))
    got_cid, phase, status = dw3 & 0xFFFF, dw3 >> 16 & 1, dw3 >> 17
    if (got_cid, phase, status) != (cid, 1, 0):
        raise NvmeError(f"bad completion: cid {got_cid:#x} phase {phase} status {status:#x}")
    ctrl.w32(DOORBELLS + (4 << dstrd), 1)                       # admin CQ head = 1
    ident = pt.guest_read(data, 4096)
    vid, = struct.unpack_from("<H", ident, 0)
    serial = ident[4:24].decode("ascii", "replace").strip()
    model = ident[24:64].decode("ascii", "replace").strip()
    ctrl.w32(CC, 0)                                             # leave the controller disabled
    ctrl.wait_ready(False, timeout_ms)
    pt.unmap_guest_memory(ram)
    return serial, model, vid


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("bdf", help="PCI address of the NVMe controller, bound to vfio-pci (e.g. 0000:00:05.0)")
    ap.add_argument("--timeout", type=float, default=10.0, help="seconds to wait for the completion interrupt")
    args = ap.parse_args(argv)
    try:
        with PassthroughDevice.open(args.bdf) as pt:
            serial, model, vid = identify(pt, args.timeout)
    except (NvmeError, OSError, ValueError) as e:
        print(f"nvme_identify: {args.bdf}: {e}", file=sys.stderr)
        return 1
    print(f"vendor: {vid:#06x}")
    print(f"serial: {serial}")
    print(f"model: {model}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
