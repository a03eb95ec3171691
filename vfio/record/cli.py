"""``vfio-capture``: write a device's record file, or show one.

    vfio-capture 0000:00:04.0 -o records/mydev.vfiorec          # through VFIO (bound to vfio-pci)
    vfio-capture 0000:00:04.0 -o mydev.vfiorec --bar-bytes 4096  # also the first page of each BAR
    vfio-capture 0000:00:1f.3 -o audio.vfiorec --sysfs           # from sysfs, any driver
    vfio-capture 0000:00:1f.3 -o audio.vfiorec --sysfs --root T  # from a tree tools/capture-sysfs wrote
    vfio-capture --show records/mydev.vfiorec                    # what a file holds

Exit status: 0 done; 1 an error (the kernel refused, I/O error, a malformed
record file for --show); 2 bad arguments (a malformed BDF, no such PCI
device, a negative --bar-bytes, --root without --sysfs).  --show reads only a regular file, up to the
reader's size limit (a FIFO or a device is refused without being read).
"""

from __future__ import annotations

import argparse
import os
import sys

from .._cli import entry_point  # closed pipe, Ctrl-C, warnings: as tools end
from . import format as F


def show(rec: F.DeviceRecord, out) -> None:
    """A readable listing of a record file."""
    p = lambda *a: print(*a, file=out)   # noqa: E731
    p(f"format 1.{rec.version_minor}, {len(rec.records)} top-level records")
    for r in rec.records:
        t = type(r)
        if t is F.PciInfo:
            p(f"PCI_INFO     {r.bdf}")
        elif t is F.DeviceInfo:
            p(f"DEVICE_INFO  flags {r.vfio_flags:#x}, {r.num_regions} regions, {r.num_irqs} irqs, "
              f"{len(r.caps)} bytes of caps")
        elif t is F.Region:
            p(f"REGION {r.index:<4}  flags {r.flags:#x}, offset {r.offset:#x}, size {r.size:#x}"
              + (f", addr {r.addr:#x}" if r.flags & F.REGION_PHYS else ""))
            for c in r.children:
                if type(c) is F.RegionData:
                    p(f"  REGION_DATA  offset {c.offset:#x}, {len(c.data)} bytes")
                elif type(c) is F.RegionInfo:
                    p(f"  REGION_INFO  vfio_flags {c.vfio_flags:#x}, {len(c.caps)} bytes of caps")
                else:
                    p(f"  {c}")
        elif t is F.Interrupt:
            p(f"INTERRUPT {r.index:<2} flags {r.flags:#x}, count {r.count}")
        elif t is F.Note:
            p(f"NOTE         {r.text}")
        else:
            p(f"{r}")


def _byte_count(text: str) -> int:
    """argparse type: a byte count, 0 or more."""
    try:
        n = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of bytes") from None
    if n < 0:
        raise argparse.ArgumentTypeError(f"{text} is negative; a number of bytes is 0 or more")
    return n


@entry_point("vfio-capture")
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vfio-capture", description="Capture a PCI device to a VFIO record file.")
    ap.add_argument("bdf", nargs="?", help="PCI address, e.g. 0000:00:04.0")
    ap.add_argument("-o", "--output", help="record file to write")
    ap.add_argument("--sysfs", action="store_true", help="capture from sysfs (device not bound to vfio-pci)")
    ap.add_argument("--bar-bytes", type=_byte_count, default=0, metavar="N",
                    help="also capture the first N bytes of each BAR (reads may have side effects)")
    ap.add_argument("--note", default="", help="text added to the NOTE record")
    ap.add_argument("--root", metavar="DIR",
                    help="with --sysfs: the system root to read (a tree captured by tools/capture-sysfs; default /)")
    ap.add_argument("--show", metavar="FILE", help="print what a record file holds and exit")
    a = ap.parse_args(argv)
    try:
        if a.show:
            show(F.load(a.show), sys.stdout)
            return 0
        if not a.bdf or not a.output:
            ap.error("BDF and -o FILE are needed (or --show FILE)")
        if a.root is not None and not a.sysfs:
            ap.error("--root goes with --sysfs (a device opened through VFIO is on this system)")
        from ..address import PciAddress
        from ..sysfs import SysfsTree
        from . import capture
        try:
            bdf = str(PciAddress.parse(a.bdf))
        except ValueError as e:
            ap.error(str(e))
        if a.root is not None and not os.path.isdir(a.root):
            print(f"vfio-capture: --root {a.root}: no such directory", file=sys.stderr)
            return 2
        # the live system's PCI devices are looked up on the capture module at call time
        tree = SysfsTree(a.root) if a.root is not None else SysfsTree.of(capture.SYSFS_PCI)
        ddir = tree.pci_device(bdf)
        # before any VFIO or sysfs access, whose errors would be about /dev/vfio or the IOMMU
        if not tree.is_dir(ddir):
            print(f"vfio-capture: no such PCI device {bdf} (no {tree.shown(ddir)})", file=sys.stderr)
            return 2
        if a.sysfs:
            rec = capture.capture_sysfs(bdf, sysfs=tree)
        else:
            import vfio
            with vfio.open_pci_device(bdf) as dev:
                rec = capture.capture_device(dev, bar_bytes=a.bar_bytes, sysfs=tree, note=a.note)
        F.save(rec, a.output)
        print(f"{a.output}: {len(F.write(rec))} bytes, {len(rec.regions)} regions, {len(rec.interrupts)} irq indexes")
        return 0
    except (OSError, ValueError) as e:
        print(f"vfio-capture: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
