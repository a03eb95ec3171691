#!/usr/bin/env python3
"""What cassettes cost: recording overhead and replay speed, as ratios in one run.

1. Recording: ``Region.read32`` on a device being recorded
   (:class:`vfio.record.cassette.RecordingBackend`) against the same read on
   the device unrecorded; then with 8 KiB of device-writable DMA memory mapped
   (each read is a synchronisation point: the memory is compared with its last
   copy); then ``MappedRegion.read32``, which recording traps (a pread instead
   of a load) against the plain mapped load.
2. Replay: ``Region.read32`` served from a cassette (strict order, and
   per-register) against the same read from a plain replayed record file (a
   ``pread`` of the BAR's memfd).

By default the device is BAR0 of the shipped edu capture, replayed (the
toolkit's own cost; a real device's read latency would be added to both
sides of a recording ratio); with ``--bdf`` part 1 runs on the real device,
inside the harness guest::

    python3 bench/bench_cassette.py [--n 2000] [--repeat 30]
    tools/vfio-harness --devices edu --bind edu -- python3 bench/bench_cassette.py --bdf 0000:00:04.0

Prints one line per figure: both timings per access (best of --repeat, taken
in alternation with the collector off: bench/timing.py; the calling thread's
CPU time, user and system, so that waiting for a core on a shared machine
counts against neither side; ``--wall`` for wall time) and the ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import timing  # noqa: E402
from vfio.device import Device, Interface  # noqa: E402
from vfio.model import SoftIommu  # noqa: E402
from vfio.record import cassette as C  # noqa: E402
from vfio.record.replay import ReplayBackend, open_replay  # noqa: E402

EDU = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "records", "edu.vfiorec")


def timed(args, fns) -> list[float]:
    """Best-of-``args.repeat`` of each of ``fns``, interleaved, in the clock asked for."""
    return timing.best_interleaved(fns, args.repeat, clock=time.perf_counter if args.wall else time.thread_time)


def line(name: str, ours: float, base: float, baseline: str, n: int) -> None:
    print(f"{name}: {ours / n * 1e9:.0f} ns/access, {baseline} {base / n * 1e9:.0f} ns/access, "
          f"ratio {ours / base:.2f}x")


def open_plain(bdf: str | None) -> Device:
    if bdf:
        import vfio
        return vfio.open_pci_device(bdf)
    space = SoftIommu()             # a DMA space, so that recording watches the mapping below
    return Device(ReplayBackend(EDU), owns=[space], dma=space, interface=Interface.REPLAY)


def reads(region, n: int, offset: int):
    r = region.read32
    rng = range(n)

    def run():
        for _ in rng:
            r(offset)
    return run


def recording(args, scratch: str) -> None:
    off = args.offset
    rec = C.record_device(open_plain(args.bdf), os.path.join(scratch, "bench.vfiorec"), text="bench")
    plain = rec.backend.inner           # the same device, unrecorded (a device opens once)
    try:
        a, b = timed(args, [reads(rec.region(0), args.n, off), reads(plain.region(0), args.n, off)])
        line("recorded read32", a, b, "plain read32", args.n)
        m = rec.dma.alloc(0x2000)
        a, b = timed(args, [reads(rec.region(0), args.n, off), reads(plain.region(0), args.n, off)])
        line("recorded read32, 8 KiB DMA watched", a, b, "plain read32", args.n)
        m.unmap()
        if plain.region(0).info.mmappable:
            pm, rm = plain.region(0).map(), rec.region(0).map()
            a, b = timed(args, [reads(rm, args.n, off), reads(pm, args.n, off)])
            line("recorded MappedRegion.read32 (trapped)", a, b, "plain MappedRegion.read32", args.n)
    finally:
        rec.close()


def replay(args, scratch: str) -> None:
    path = os.path.join(scratch, "reads.vfiorec")
    total = args.n * args.repeat
    with C.record_device(open_replay(EDU), path, text="bench reads") as dev:
        r = dev.region(0).read32
        for _ in range(total):
            r(0)
    plain = open_replay(EDU)
    try:
        for mode in C.Match:
            with C.open_cassette(path, mode=mode) as cas:
                a, b = timed(args, [reads(cas.region(0), args.n, 0), reads(plain.region(0), args.n, 0)])
                line(f"replayed read32 ({mode})", a, b, "plain replayed memfd read32", args.n)
    finally:
        plain.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000, help="accesses per timed run")
    ap.add_argument("--repeat", type=int, default=30)
    ap.add_argument("--bdf", help="record a real device's BAR0 (in the guest) instead of the replayed edu")
    ap.add_argument("--wall", action="store_true", help="time wall-clock time instead of the thread's CPU time")
    ap.add_argument("--offset", type=lambda s: int(s, 0), default=0x0, help="BAR0 offset read (default 0: edu's ID)")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        recording(args, scratch)
        if not args.bdf:
            replay(args, scratch)
    return 0


if __name__ == "__main__":
    sys.exit(main())
