"""Decode speed of the record-file codec, as a ratio against a hand-written
``struct.unpack_from`` loop over the same bytes.

The file: a PCI device with thousands of records (regions with BAR info,
region info and small data chunks, interrupts, notes).  The baseline
(:func:`baseline`) walks the same bytes and unpacks every field of every
record with precompiled ``struct.Struct`` objects, keeping a tuple per record,
but checks nothing; the codec builds the model and validates everything
``FORMAT.md`` says a reader refuses (and cstruct itself, used naively, is timed
too for reference).

Second, lazy access: a record file of ``--big-mib`` MiB (default 100) holding
a large BAR (one REGION_DATA record, as ``vfio-capture`` writes it), a 4 KiB
BAR and config space.  Reading config space from it through
:class:`vfio.record.format.MappedRecord` (mmap, ``parse(lazy=True)``: region
data stay memoryviews into the mapping, so only the pages of record headers
and of the bytes read are touched) is timed against ``load()`` (the whole file
read and copied), each in a fresh process, with the RSS each adds.

    python3 bench/bench_record_decode.py [--records N] [--repeat R] [--big-mib M]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time

import os

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from timing import best, best_interleaved  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402

from vfio.record import format as F  # noqa: E402


def make_file(n: int) -> bytes:
    recs = [F.PciInfo(0, 0, 3, 0), F.DeviceInfo(3, n, 5)]
    for i in range(n // 5):
        kids = [F.PciBarInfo(F.BAR_MMIO32, i % 6), F.RegionInfo(7, bytes(8)), F.RegionData(0, bytes(range(64)))]
        recs.append(F.Region(i, 0x17, i << 40, 1 << 20, 0xFE000000, kids))
    recs += [F.Interrupt(i, 9, 1) for i in range(n // 10)]
    recs += [F.Note(f"note {i}") for i in range(n - len(recs) - 3 * (n // 5))]
    return F.write(F.DeviceRecord(recs))


_H = struct.Struct("<III")
_REGION = struct.Struct("<IIIIQQQ")
_BAR = struct.Struct("<IIIII")
_RINFO = struct.Struct("<IIII")
_DATA = struct.Struct("<IIIIQ")
_IRQ = struct.Struct("<IIIIII")
_PCI = struct.Struct("<IIIIBBBB")
_DEVINFO = struct.Struct("<IIIIII")
_DTINDEX = struct.Struct("<IIIII")


def baseline(b: bytes) -> list:
    """The fastest correct hand loop: every record's every field unpacked with a
    precompiled ``struct.Struct`` (no field skipped), notes decoded, data and
    capability bytes copied, sub-records walked, one tuple per record kept --
    the same information the codec's model holds, without its checks or its
    objects.  (The earlier baseline skipped REGION_INFO, notes and part of
    INTERRUPT, so it was not doing the same work.)"""
    hdr, region, bar, rinfo, data = _H.unpack_from, _REGION.unpack_from, _BAR.unpack_from, \
        _RINFO.unpack_from, _DATA.unpack_from
    out = []
    append = out.append
    pos = _H.unpack_from(b, 16)[0]
    end = len(b)
    while pos < end:
        t, ln, fl = hdr(b, pos)
        if t == 1:                                  # REGION and its sub-records
            kids = []
            p, e = pos + 40, pos + ln
            while p < e:
                t2, l2, _ = hdr(b, p)
                if t2 == 0x8003:
                    kids.append((data(b, p), b[p + 24:p + l2]))
                elif t2 == 6:
                    kids.append(bar(b, p))
                elif t2 == 0x8002:
                    kids.append((rinfo(b, p), b[p + 16:p + l2]))
                elif t2 == 5:
                    kids.append((t2, l2))
                elif t2 == 2:
                    kids.append(b[p + 12:p + l2 - 1].decode())
                elif t2 == 3:
                    kids.append(_DTINDEX.unpack_from(b, p))
                p = (p + l2 + 7) & ~7
            append((region(b, pos), kids))
        elif t == 0x8004:
            append((fl, b[pos + 12:pos + ln - 1].decode()))
        elif t == 4:
            kids = []
            p, e = pos + 24, pos + ln
            while p < e:
                t2, l2, _ = hdr(b, p)
                kids.append(b[p + 12:p + l2 - 1].decode() if t2 == 2 else _DTINDEX.unpack_from(b, p))
                p = (p + l2 + 7) & ~7
            append((_IRQ.unpack_from(b, pos), kids))
        elif t == 7:
            append(_PCI.unpack_from(b, pos))
        elif t == 0x8001:
            append((_DEVINFO.unpack_from(b, pos), b[pos + 24:pos + ln]))
        else:
            append(b[pos:pos + ln])
        pos = (pos + ln + 7) & ~7
    return out


_U_REGION = struct.Struct("<IQQQ").unpack_from
_U_II = struct.Struct("<II").unpack_from
_U_I = struct.Struct("<I").unpack_from
_U_IQ = struct.Struct("<IQ").unpack_from
_U_III = struct.Struct("<III").unpack_from


def objects_floor(b: bytes) -> list:
    """What building the codec's model costs at the least: the baseline's walk,
    with the model objects (``object.__new__`` and their fields set, as the
    codec's decoders do) instead of tuples; no check, no call per record
    (``--breakdown``).  Only the record types of this bench's file."""
    hdr = _H.unpack_from
    new = object.__new__
    out = []
    append = out.append
    pos, end = _H.unpack_from(b, 16)[0], len(b)
    while pos < end:
        t, ln, fl = hdr(b, pos)
        if t == 1:
            kids = []
            p, e = pos + 40, pos + ln
            while p < e:
                t2, l2, f2 = hdr(b, p)
                if t2 == 0x8003:
                    o = new(F.RegionData)
                    _, o.offset = _U_IQ(b, p + 12)
                    o.data = b[p + 24:p + l2]
                elif t2 == 6:
                    o = new(F.PciBarInfo)
                    o.bar_type, o.bar_index = _U_II(b, p + 12)
                else:
                    o = new(F.RegionInfo)
                    o.vfio_flags, = _U_I(b, p + 12)
                    o.caps = b[p + 16:p + l2]
                o.flags = f2
                kids.append(o)
                p = (p + l2 + 7) & ~7
            o = new(F.Region)
            o.index, o.offset, o.size, o.addr = _U_REGION(b, pos + 12)
            o.children = kids
        elif t == 0x8004:
            o = new(F.Note)
            o.text = b[pos + 12:pos + ln - 1].decode()
        elif t == 4:
            o = new(F.Interrupt)
            o.index, o.count, _ = _U_III(b, pos + 12)
            o.children = []
        else:
            o = b[pos:pos + ln]
            append(o)
            pos = (pos + ln + 7) & ~7
            continue
        o.flags = fl
        append(o)
        pos = (pos + ln + 7) & ~7
    return out


def count(tree: list) -> int:
    return sum(1 + len(r[1]) if isinstance(r, tuple) and len(r) == 2 and isinstance(r[1], list) else 1
               for r in tree)


def make_big_file(path: str, big: int) -> None:
    """Config space, a 4 KiB BAR0 and a ``big``-byte BAR2 (patterned, not sparse)."""
    cfg = bytes(range(256))
    small = F.DeviceRecord([
        F.PciInfo(0, 0, 4, 0), F.DeviceInfo(3, 9, 5),
        F.Region(7, F.REGION_READ | F.REGION_WRITE, 0x70000000000, 256, 0,
                 [F.PciConfigSpace(), F.RegionData(0, cfg)]),
        F.Region(0, F.REGION_READ | F.REGION_WRITE | F.REGION_MMAP, 0, 4096, 0xFE000000,
                 [F.PciBarInfo(F.BAR_MMIO32, 0), F.RegionData(0, bytes(4096))])])
    head = bytearray(F.write(small))
    head += bytes(-len(head) % F.ALIGN)
    rlen = F._S_REGION.size + F._S_DATA.size + big
    head += F._S_REGION.pack(F.REGION, rlen, F.REGION_READ | F.REGION_MMAP, 2, 2 << 40, big, 0xC0000000)
    head += F._S_DATA.pack(F.REGION_DATA, F._S_DATA.size + big, 0, 0, 0)
    struct.pack_into("<Q", head, 24, len(head) + big)          # the header's file_len
    chunk = bytes(range(256)) * 4096                            # 1 MiB
    with open(path, "wb") as f:
        f.write(head)
        for off in range(0, big, len(chunk)):
            f.write(chunk[:min(len(chunk), big - off)])


_LAZY_CHILD = r"""
import os, sys, time
sys.path.insert(0, sys.argv[3])
from vfio.record import format as F
def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:")) * 1024
before = rss()
t0 = time.perf_counter()
if sys.argv[2] == "lazy":
    m = F.MappedRecord(sys.argv[1])
    rec = m.record
else:
    rec = F.load(sys.argv[1])
cfg = rec.config_region.contents(0, 256)
dt = time.perf_counter() - t0
assert cfg == bytes(range(256))
print(dt, rss() - before)
"""


def lazy_bench(big_mib: int, repeat: int) -> None:
    root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    with tempfile.TemporaryDirectory(prefix="bench-record-") as d:
        path = os.path.join(d, "big.vfiorec")
        make_big_file(path, big_mib << 20)
        size = os.path.getsize(path)
        res = {}
        for mode in ("lazy", "eager"):
            runs = []
            for _ in range(repeat):
                out = subprocess.run([sys.executable, "-c", _LAZY_CHILD, path, mode, root], check=True,
                                     capture_output=True, text=True).stdout.split()
                runs.append((float(out[0]), int(out[1])))
            res[mode] = min(runs)
    (tl, rl), (te, re_) = res["lazy"], res["eager"]
    print(f"record file of {size / 2**20:.0f} MiB (a {big_mib} MiB BAR, config space, a 4 KiB BAR), "
          f"config space read, best of {repeat} fresh processes (page cache warm):")
    print(f"  MappedRecord (mmap, lazy): {tl * 1e3:8.2f} ms, RSS +{rl / 2**20:6.2f} MiB")
    print(f"  load() (read, copy):       {te * 1e3:8.2f} ms, RSS +{re_ / 2**20:6.2f} MiB   "
          f"(lazy: {te / tl:.0f}x faster, {re_ / max(rl, 1):.0f}x less memory)")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=5000)
    ap.add_argument("--repeat", type=int, default=21)
    ap.add_argument("--big-mib", type=int, default=100, help="size of the lazy-access file's large BAR")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the model objects alone, built inline without checks or calls")
    a = ap.parse_args(argv)
    b = make_file(a.records)
    nrec = count(baseline(b))
    rec = F.parse(b)
    assert F.write(rec) == b
    t_base, t_codec = best_interleaved([lambda: baseline(b), lambda: F.parse(b)], a.repeat)
    c_base, c_codec = best_interleaved([lambda: baseline(b), lambda: F.parse(b)], a.repeat, time.thread_time)
    import gc
    gc.enable()                     # the same with the garbage collector running, as in a program
    g_base, g_codec = [min(x) for x in zip(*[(best(lambda: baseline(b), 1), best(lambda: F.parse(b), 1))
                                            for _ in range(a.repeat)])]
    t_cs = best(lambda: [F._L_RecordHeader(b[i:i + 12]) for i in range(0, 12 * 500, 12)], 3) * nrec / 500
    print(f"file: {len(b)} bytes, {nrec} records (incl. sub-records); best of {a.repeat}, interleaved, gc off")
    print(f"baseline (hand struct.unpack_from loop, every field): {t_base * 1e3:7.2f} ms  "
          f"({nrec / t_base / 1e6:.2f} M records/s)")
    print(f"vfio.record.format.parse (model + every check):      {t_codec * 1e3:7.2f} ms  "
          f"({nrec / t_codec / 1e6:.2f} M records/s)")
    print(f"ratio parse / baseline: {t_codec / t_base:.2f}x   (CPU time: {c_codec / c_base:.2f}x, "
          f"{c_base * 1e3:.2f} vs {c_codec * 1e3:.2f} ms; gc on: {g_codec / g_base:.2f}x)   "
          f"cstruct object per record header (estimate): {t_cs / t_base:.0f}x")
    if a.breakdown:
        assert [type(r) for r in objects_floor(b)[2:]] == [type(r) for r in rec.records[2:]]
        c_base, c_floor, c_codec = best_interleaved([lambda: baseline(b), lambda: objects_floor(b),
                                                     lambda: F.parse(b)], a.repeat, time.thread_time)
        print(f"breakdown (CPU time): the model objects alone, built inline, no check, no call per record: "
              f"{c_floor * 1e3:.2f} ms = {c_floor / c_base:.2f}x the baseline; parse {c_codec / c_base:.2f}x")
    if a.big_mib:
        lazy_bench(a.big_mib, max(3, a.repeat // 4))
    return 0


if __name__ == "__main__":
    sys.exit(main())
