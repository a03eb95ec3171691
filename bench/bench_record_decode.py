"""Decode speed of the record-file codec, as a ratio against a hand-written
``struct.unpack_from`` loop over the same bytes.

The file: a PCI device with thousands of records (regions with BAR info,
region info and small data chunks, interrupts, notes).  The baseline walks the
same bytes with the record header layout and per-type unpacks but builds no
objects and checks nothing; the codec builds the model and validates it (and
cstruct itself, used naively, is timed too for reference).

    python3 bench/bench_record_decode.py [--records N] [--repeat R]
"""

from __future__ import annotations

import argparse
import struct
import sys

import os

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import best  # noqa: E402

from vfio.record import format as F  # noqa: E402


def make_file(n: int) -> bytes:
    recs = [F.PciInfo(0, 0, 3, 0), F.DeviceInfo(3, n, 5)]
    for i in range(n // 5):
        kids = [F.PciBarInfo(F.BAR_MMIO32, i % 6), F.RegionInfo(7, bytes(8)), F.RegionData(0, bytes(range(64)))]
        recs.append(F.Region(i, 0x17, i << 40, 1 << 20, 0xFE000000, kids))
    recs += [F.Interrupt(i, 9, 1) for i in range(n // 10)]
    recs += [F.Note(f"note {i}") for i in range(n - len(recs) - 3 * (n // 5))]
    return F.write(F.DeviceRecord(recs))


def baseline(b: bytes) -> int:
    """Hand-written walk: header, then each record's fixed fields, sub-records of REGION."""
    hdr = struct.Struct("<III")
    region = struct.Struct("<IIIIQQQ")
    small = struct.Struct("<IIIII")
    count = 0
    pos = struct.unpack_from("<I", b, 16)[0]
    end = len(b)
    stack = []
    while pos < end or stack:
        if stack and pos >= stack[-1]:
            pos = (stack.pop() + 7) & ~7
            continue
        t, ln, fl = hdr.unpack_from(b, pos)
        count += 1
        if t == 1:
            region.unpack_from(b, pos)
            stack.append(pos + ln)
            pos += 40
            continue
        if t in (3, 4, 6, 7, 0x8001):
            small.unpack_from(b, pos)
        elif t == 0x8003:
            bytes(b[pos + 24:pos + ln])
        pos = (pos + ln + 7) & ~7
    return count



def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    b = make_file(a.records)
    nrec = baseline(b)
    rec = F.parse(b)
    assert F.write(rec) == b
    t_base = best(lambda: baseline(b), a.repeat)
    t_codec = best(lambda: F.parse(b), a.repeat)
    t_cs = best(lambda: [F._L_RecordHeader(b[i:i + 12]) for i in range(0, 12 * 500, 12)], 3) * nrec / 500
    print(f"file: {len(b)} bytes, {nrec} records (incl. sub-records)")
    print(f"baseline struct.unpack_from walk: {t_base * 1e3:8.2f} ms  ({nrec / t_base / 1e6:.2f} M records/s)")
    print(f"vfio.record.format.parse:         {t_codec * 1e3:8.2f} ms  ({nrec / t_codec / 1e6:.2f} M records/s)")
    print(f"cstruct object per record header (estimate): {t_cs * 1e3:8.2f} ms")
    print(f"ratio parse / baseline: {t_codec / t_base:.2f}x   cstruct-per-record / baseline: {t_cs / t_base:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
