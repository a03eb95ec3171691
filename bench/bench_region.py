#!/usr/bin/env python3
"""MappedRegion's accessors against raw memoryview access to the same BAR, as ratios in one run.

1. ``read8/16/32/64`` and ``write8/16/32/64`` at 64 naturally aligned offsets,
   against a raw native-format ``memoryview.cast`` item access on the same
   memory (``mv32[off >> 2]``, ``mv32[off >> 2] = v``: one load or store, no
   checks).  The toolkit still checks bounds, alignment and the value's width.
2. Bulk ``read(off, 4096)`` / ``write(off, block)`` of an 8-aligned 4 KiB block,
   against a raw Python loop of the same 512 8-byte accesses (loads into a
   bytearray's ``Q`` view; stores from the block's ``Q`` view).

The raw views are made over a second mmap of the same region (the same
memory: a memfd on replay, the BAR on a device).  By default the region is
BAR0 of the shipped edu capture, replayed (the accessor's own cost, without
device latency, which would hide it); with ``--bdf`` it is the real device's
BAR0, run inside the harness guest::

    python3 bench/bench_region.py [--n 4000] [--repeat 200] [--bdf BDF] [--offset 0x1000]
    tools/vfio-harness --devices edu --kernel container -- python3 bench/bench_region.py --bdf 0000:00:04.0

On real edu the accesses go to unimplemented registers at --offset (reads
answer all-ones, writes are dropped: no side effect); edu accepts only 4- and
8-byte accesses, so its 8/16-bit figures time accesses the model ignores.
A last line gives, for context, the same ratio for a Python method that does
nothing but the item access: the interpreter's call cost, the floor of any
accessor method.  Prints one line per figure with both timings (best of --repeat, taken in
alternation, the collector off: bench/timing.py) and the ratio; the target is <= 2x everywhere.
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import best_interleaved  # noqa: E402
from vfio.record.replay import open_replay  # noqa: E402

TARGET = 2.0
FMT = {1: "B", 2: "H", 4: "I", 8: "Q"}
SHIFT = {1: 0, 2: 1, 4: 2, 8: 3}


def report(name: str, baseline: str, t_ours: float, t_raw: float, per: int, unit: str = "ns/access") -> float:
    ratio = t_ours / t_raw
    print(f"{name}: toolkit {t_ours / per * 1e9:.0f} {unit}, {baseline} {t_raw / per * 1e9:.0f} {unit}, "
          f"ratio {ratio:.2f}x (target <= {TARGET:g}x){'' if ratio <= TARGET else '  OVER TARGET'}")
    return ratio


def bench_accessors(bar, raw_mm, base: int, n: int, repeat: int) -> list[float]:
    ratios = []
    rounds = max(1, n // 64)
    for w in (1, 2, 4, 8):
        view = memoryview(raw_mm).cast(FMT[w])
        sh = SHIFT[w]
        offs = [base + i * w for i in range(64)]
        rd, wr = getattr(bar, f"read{8 * w}"), getattr(bar, f"write{8 * w}")
        val = (1 << (8 * w)) - 2

        def ours_r():
            for _ in range(rounds):
                for o in offs:
                    rd(o)

        def raw_r():
            v = view
            for _ in range(rounds):
                for o in offs:
                    v[o >> sh]

        def ours_w():
            for _ in range(rounds):
                for o in offs:
                    wr(o, val)

        def raw_w():
            v = view
            for _ in range(rounds):
                for o in offs:
                    v[o >> sh] = val

        assert all(rd(o) == view[o >> sh] for o in offs)
        per = rounds * 64
        t = best_interleaved([ours_r, raw_r], repeat)
        ratios.append(report(f"read{8 * w}", f"raw memoryview.cast('{FMT[w]}')[off >> {sh}]", *t, per))
        t = best_interleaved([ours_w, raw_w], repeat)
        ratios.append(report(f"write{8 * w}", f"raw memoryview.cast('{FMT[w]}')[off >> {sh}] = v", *t, per))
        view.release()
    return ratios


class _Floor:
    """What any Python accessor costs at least: a method doing only the item access
    (no checks).  Printed for context: on a loaded machine the call alone nears 2x."""

    __slots__ = ("v4",)

    def __init__(self, v4):
        self.v4 = v4

    def read32(self, offset):
        return self.v4[offset >> 2]

    def write32(self, offset, value):
        self.v4[offset >> 2] = value


def bench_floor(raw_mm, base: int, n: int, repeat: int) -> None:
    view = memoryview(raw_mm).cast("I")
    rounds = max(1, n // 64)
    offs = [base + i * 4 for i in range(64)]
    rd = _Floor(view).read32

    def floor():
        for _ in range(rounds):
            for o in offs:
                rd(o)

    def raw():
        v = view
        for _ in range(rounds):
            for o in offs:
                v[o >> 2]

    wr = _Floor(view).write32

    def floor_w():
        for _ in range(rounds):
            for o in offs:
                wr(o, 5)

    def raw_w():
        v = view
        for _ in range(rounds):
            for o in offs:
                v[o >> 2] = 5

    t_floor, t_raw = best_interleaved([floor, raw], repeat)
    print(f"(context) unchecked Python method read32: {t_floor / (rounds * 64) * 1e9:.0f} ns/access, "
          f"raw {t_raw / (rounds * 64) * 1e9:.0f} ns/access, ratio {t_floor / t_raw:.2f}x: the call's own cost")
    t_floor, t_raw = best_interleaved([floor_w, raw_w], repeat)
    print(f"(context) unchecked Python method write32: {t_floor / (rounds * 64) * 1e9:.0f} ns/access, "
          f"raw {t_raw / (rounds * 64) * 1e9:.0f} ns/access, ratio {t_floor / t_raw:.2f}x: the call's own cost")
    rd = wr = None
    view.release()


def bench_bulk(bar, raw_mm, base: int, n: int, repeat: int) -> list[float]:
    v8 = memoryview(raw_mm).cast("Q")
    block = bytes(range(256)) * 16
    b8 = memoryview(block).cast("Q")
    first = base >> 3
    rounds = max(1, n // 4096)

    def ours_r():
        for _ in range(rounds):
            bar.read(base, 4096)

    def raw_r():
        for _ in range(rounds):
            out = bytearray(4096)
            o8 = memoryview(out).cast("Q")
            for i in range(512):
                o8[i] = v8[first + i]
            bytes(out)

    def ours_w():
        for _ in range(rounds):
            bar.write(base, block)

    def raw_w():
        for _ in range(rounds):
            for i in range(512):
                v8[first + i] = b8[i]

    bar.write(base, block)
    got = bar.read(base, 4096)
    assert got == bytes(v8[first:first + 512]) or got == b"\xff" * 4096      # memory, or edu's unimplemented registers
    t = best_interleaved([ours_r, raw_r], repeat)
    ratios = [report("read 4 KiB", "raw loop of 512 memoryview.cast('Q') loads", *t, rounds, "ns/block")]
    t = best_interleaved([ours_w, raw_w], repeat)
    ratios.append(report("write 4 KiB", "raw loop of 512 memoryview.cast('Q') stores", *t, rounds, "ns/block"))
    v8.release()
    b8.release()
    return ratios


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=4_000, help="accesses per timed run (bulk: bytes / 4096 blocks)")
    ap.add_argument("--repeat", type=int, default=200)
    ap.add_argument("--bdf", help="a device bound to vfio-pci (inside the harness guest); its BAR0")
    ap.add_argument("--offset", type=lambda s: int(s, 0), default=None,
                    help="where in BAR0 (default 0x1000 on a device: edu's unimplemented registers; 0 on replay)")
    a = ap.parse_args(argv)
    if a.bdf:
        import vfio
        dev = vfio.open_pci_device(a.bdf)
        where = f"{a.bdf} BAR0"
    else:
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "records", "edu.vfiorec")
        dev = open_replay(path)
        where = "replayed edu BAR0 (records/edu.vfiorec, a memfd)"
    base = a.offset if a.offset is not None else (0x1000 if a.bdf else 0)
    with dev:
        region = dev.region(0)
        print(f"bench_region: {where}, offset {base:#x}, {sys.implementation.name} {sys.version.split()[0]}")
        with region.map() as bar:
            raw_mm = dev.backend.mmap(region.info.offset, region.size)
            try:
                ratios = bench_accessors(bar, raw_mm, base, a.n, a.repeat)
                ratios += bench_bulk(bar, raw_mm, base, a.n * 8, a.repeat)
                bench_floor(raw_mm, base, a.n, a.repeat)
            finally:
                raw_mm.close()
    print(f"worst ratio {max(ratios):.2f}x (target <= {TARGET:g}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
