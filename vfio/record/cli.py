"""``vfio-capture``: write a device's record file, or show one; ``vfio-record``
(:func:`record_main`): record a program's session into a cassette, or print one.

    vfio-capture 0000:00:04.0 -o records/mydev.vfiorec          # through VFIO (bound to vfio-pci)
    vfio-capture 0000:00:04.0 -o mydev.vfiorec --bar-bytes 4096  # also the first page of each BAR
    vfio-capture 0000:00:1f.3 -o audio.vfiorec --sysfs           # from sysfs, any driver
    vfio-capture 0000:00:1f.3 -o audio.vfiorec --sysfs --root T  # from a tree tools/capture-sysfs wrote
    vfio-capture a000000.virtio_mmio -o vmmio.vfiorec            # a device-tree device (vfio-platform)
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
                    p(f"  {_child(c)}")
        elif t is F.Interrupt:
            p(f"INTERRUPT {r.index:<2} flags {r.flags:#x}, count {r.count}")
            for c in r.children:
                p(f"  {_child(c)}")
        elif t is F.Note:
            p(f"NOTE         {r.text}")
        elif t is F.Cassette:
            p(f"CASSETTE     {r.text}")
        elif t is F.Accesses:
            p(f"ACCESSES     {len(r.entries)} accesses")
        elif t is F.AccessData:
            p(f"ACCESS_DATA  {'write' if r.write else 'read'} of {len(r.data)} bytes at region {r.index} "
              f"+ {r.offset:#x}")
        elif t in _SESSION_EVENTS:
            from .cassette import describe_event
            p(f"{F.type_name(t.type):<12} after access {r.at}: {describe_event(r)}")
        else:
            p(f"{r}")


#: DTINDEX's property types, as FORMAT.md names them
_DT_PROPS = {F.DT_PROP_REG: "reg", F.DT_PROP_RANGES: "ranges", F.DT_PROP_INTERRUPTS: "interrupts",
             F.DT_PROP_INTERRUPT_MAP: "interrupt-map"}


def _child(c) -> str:
    """One line for a sub-record a region and an interrupt share (their device-tree origin)."""
    if type(c) is F.DtPath:
        return f"DTPATH       {c.path}"
    if type(c) is F.DtIndex:
        return f"DTINDEX      {_DT_PROPS.get(c.prop_type, f'property type {c.prop_type}')}[{c.prop_index}]"
    return f"{c}"


_SESSION_EVENTS = (F.IrqSet, F.IrqEvent, F.ResetEvent, F.DmaMap, F.DmaUnmap, F.DmaWrite, F.Marker)


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
    ap = argparse.ArgumentParser(prog="vfio-capture", description="Capture a PCI or device-tree device to a "
                                 "VFIO record file.")
    ap.add_argument("bdf", nargs="?", metavar="DEVICE",
                    help="PCI address (e.g. 0000:00:04.0), or a platform/AMBA device's name "
                         "(e.g. a000000.virtio_mmio, bound to vfio-platform/vfio-amba)")
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
            # not a PCI address: a device-tree device's name (a000000.virtio_mmio, 9010000.pl031),
            # captured through vfio-platform/vfio-amba with its DTPATH/DTINDEX records
            from .. import platform as P
            tree = SysfsTree.of(capture.SYSFS_PCI)
            try:
                P.find_platform_device(a.bdf, tree)
            except (OSError, ValueError):
                ap.error(f"{e}; nor is {a.bdf!r} a platform or AMBA device (no "
                         f"{tree.shown(P.Bus.PLATFORM.devices + '/' + a.bdf)} nor .../amba/devices/{a.bdf})")
            if a.sysfs or a.root is not None:
                ap.error(f"{a.bdf} is a platform device: --sysfs/--root capture PCI devices only; "
                         "bind it to vfio-platform (vfio-assign bind) and capture it through VFIO")
            with P.open_platform_device(a.bdf, sysfs=tree) as dev:
                rec = capture.capture_device(dev, bar_bytes=a.bar_bytes, sysfs=tree, note=a.note)
            F.save(rec, a.output)
            print(f"{a.output}: {len(F.write(rec))} bytes, {len(rec.regions)} regions, "
                  f"{len(rec.interrupts)} irq indexes")
            return 0
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


_RECORD_DOC = """Record a program's session with a device into a cassette, or print a cassette's trace.

    vfio-record -o edu-session.vfiorec -- python3 examples/edu_driver.py 0000:00:04.0
    vfio-record --trace edu-session.vfiorec | less

The program runs unmodified with VFIO_RECORD set: the device it opens through
vfio.open_pci_device (PassthroughDevice.open included) is recorded, and the
cassette is written when the program closes it.  Given the cassette's path
instead of the PCI address, the same program replays the session with no VFIO.

Exit status: the program's own; 1 when the program succeeded but no cassette
was written (it opened no device); 2 bad arguments; --trace: 0, or 1 for a file
that cannot be read or is not a cassette."""


@entry_point("vfio-record")
def record_main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="vfio-record", description=_RECORD_DOC.split("\n\n")[0],
                                 epilog="\n\n".join(_RECORD_DOC.split("\n\n")[1:]),
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-o", "--output", metavar="CASSETTE", help="cassette to write (replaced when the program ends)")
    ap.add_argument("--trace", metavar="CASSETTE", help="print the session, one access or event per line")
    ap.add_argument("command", nargs=argparse.REMAINDER, help="-- PROGRAM [ARGS...]")
    a = ap.parse_args(argv)
    cmd = a.command[1:] if a.command[:1] == ["--"] else a.command
    if a.trace:
        if a.output or cmd:
            ap.error("--trace FILE takes nothing else")
        from .cassette import trace_lines
        try:
            rec = F.load(a.trace)
            if rec.cassette is None:
                raise F.RecordFormatError(None, None, "not a cassette (no CASSETTE record): a device record "
                                          "without a session", a.trace)
        except (OSError, ValueError) as e:
            print(f"vfio-record: {e}", file=sys.stderr)
            return 1
        for line in trace_lines(rec):
            sys.stdout.write(line + "\n")
        return 0
    if not a.output or not cmd:
        ap.error("-o CASSETTE and -- PROGRAM [ARGS...] are needed (or --trace CASSETTE)")
    out = os.path.abspath(a.output)
    if not os.path.isdir(os.path.dirname(out)):
        ap.error(f"-o {a.output}: no such directory {os.path.dirname(out)}")
    from .cassette import RECORD_ENV
    before = _stamp(out)
    import subprocess
    try:
        rc = subprocess.call(cmd, env={**os.environ, RECORD_ENV: out})
    except OSError as e:
        print(f"vfio-record: {cmd[0]}: {e.strerror}", file=sys.stderr)
        return 127 if isinstance(e, FileNotFoundError) else 126
    if _stamp(out) == before:
        print(f"vfio-record: no cassette written to {a.output}: the program opened no device through "
              f"vfio.open_pci_device" + (f" (it exited with status {rc})" if rc else ""), file=sys.stderr)
        return rc or 1
    if rc == 0:
        print(f"vfio-record: {a.output}: {os.path.getsize(out)} bytes", file=sys.stderr)
    return rc if rc >= 0 else 128 - rc


def _stamp(path: str):
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return (st.st_ino, st.st_mtime_ns, st.st_size)


if __name__ == "__main__":
    sys.exit(main())
