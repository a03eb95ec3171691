"""The IOVA allocator's fast paths give the answers of a plain first-fit allocator.

:class:`vfio.dma.IovaAllocator` hands out the IOVA of a just-freed allocation
again without scanning (and without writing it into its free list) and merges
a freed block with its neighbours only.  The oracle below is the allocator as
it was before those fast paths (first fit over a sorted free list, every free
appending, sorting and merging the whole list); random sequences of alloc,
reserve and free -- biased towards the map/unmap/map-again pattern the fast
paths serve -- must give the same IOVAs, the same errors and the same free
space.
"""

from __future__ import annotations

import random

import pytest

from vfio.dma import IovaAllocator
from vfio.errors import InvalidValue, IovaExhausted, IovaNotAllocated


def _round_up(n, align):
    return (n + align - 1) // align * align


class FirstFitOracle:
    """The pre-fast-path allocator, kept here as the reference."""

    def __init__(self, ranges, align=0x1000, floor=0x100000):
        self.align, self.floor, self.free_list, self.used = align, floor, [], {}
        for s, e in sorted(ranges):
            s = _round_up(s, align)
            e_ex = (e + 1) // align * align
            if e_ex > s:
                self.free_list.append([s, e_ex])

    def alloc(self, size, align=None, limit=None):
        align = max(align or self.align, self.align)
        size = _round_up(size, self.align)
        for blk in self.free_list:
            s = _round_up(max(blk[0], self.floor), align)
            if s + size <= blk[1] and (limit is None or s + size <= limit):
                self._take(s, size)
                return s
        raise IovaExhausted(f"no free IOVA range of {size:#x} bytes" + (f" below {limit:#x}" if limit is not None else ""))

    def reserve(self, iova, size):
        size = _round_up(size, self.align)
        if iova % self.align:
            raise InvalidValue(f"IOVA {iova:#x} is not aligned to {self.align:#x}")
        for blk in self.free_list:
            if blk[0] <= iova and iova + size <= blk[1]:
                self._take(iova, size)
                return
        raise InvalidValue(f"IOVA range {iova:#x}+{size:#x} is not free or not inside the usable ranges")

    def _take(self, s, size):
        for i, blk in enumerate(self.free_list):
            if blk[0] <= s and s + size <= blk[1]:
                pieces = ([[blk[0], s]] if blk[0] < s else []) + ([[s + size, blk[1]]] if s + size < blk[1] else [])
                self.free_list[i:i + 1] = pieces
                self.used[s] = size
                return
        raise AssertionError("unreachable")

    def free(self, iova):
        try:
            size = self.used.pop(iova)
        except KeyError:
            raise IovaNotAllocated(f"IOVA {iova:#x} was not allocated") from None
        self.free_list.append([iova, iova + size])
        self.free_list.sort()
        merged = []
        for blk in self.free_list:
            if merged and merged[-1][1] == blk[0]:
                merged[-1][1] = blk[1]
            else:
                merged.append(blk)
        self.free_list = merged


def _outcome(fn, *args, **kw):
    try:
        return ("ok", fn(*args, **kw))
    except (IovaExhausted, IovaNotAllocated, InvalidValue) as e:
        return (type(e).__name__, str(e))


def _free_space(a: IovaAllocator):
    """The allocator's free space as merged (start, end) pairs, however it is stored."""
    a._settle()
    return [tuple(b) for b in a._free]


RANGES = [
    [(0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)],              # x86 with VT-d: the MSI hole
    [(0x100000, 0x3FFFFF)],                                      # small: exhaustion happens
    [(0, 0xFFFFF), (0x200000, 0x2FFFFF), (0x400000, 0x47FFFF)],  # holes, one below the floor
]


@pytest.mark.parametrize("seed", range(12))
def test_random_sequences_give_first_fit_answers(seed):
    rnd = random.Random(seed)
    ranges = RANGES[seed % len(RANGES)]
    fast, slow = IovaAllocator(ranges), FirstFitOracle(ranges)
    live = []
    sizes = [0x1000, 0x2000, 0x10000, 0x3000, 0x40000]
    for step in range(600):
        r = rnd.random()
        if r < 0.45:                                  # the map pattern: one of a few sizes, often repeated
            size = rnd.choice(sizes) - rnd.choice([0, 0, 0, 0x800])
            kw = {}
            if rnd.random() < 0.1:
                kw["align"] = rnd.choice([0x2000, 0x10000, 0x100000])
            if rnd.random() < 0.1:
                kw["limit"] = rnd.choice([0x200000, 0x300000, 0x1000000])
            got = _outcome(fast.alloc, size, **kw)
            assert got == _outcome(slow.alloc, size, **kw), (step, size, kw)
            if got[0] == "ok":
                live.append(got[1])
        elif r < 0.85 and live:                       # free: usually the newest (unmap after map)
            iova = live.pop() if rnd.random() < 0.7 else live.pop(rnd.randrange(len(live)))
            assert _outcome(fast.free, iova) == _outcome(slow.free, iova) == ("ok", None)
        elif r < 0.92:                                # reserve a caller-chosen IOVA, free or not
            iova = rnd.randrange(0, 0x500000, 0x1000)
            size = rnd.choice(sizes)
            got = _outcome(fast.reserve, iova, size)
            assert got == _outcome(slow.reserve, iova, size), (step, hex(iova))
            if got[0] == "ok":
                live.append(iova)
        else:                                         # a free of something not allocated
            iova = rnd.randrange(0, 0x500000, 0x1000)
            if iova not in live:
                assert _outcome(fast.free, iova) == _outcome(slow.free, iova)
        if step % 50 == 0:
            assert _free_space(fast) == [tuple(b) for b in slow.free_list]
    assert _free_space(fast) == [tuple(b) for b in slow.free_list]


def test_map_unmap_map_again_reuses_the_iova_without_touching_the_free_list():
    a = IovaAllocator([(0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF)])
    x = a.alloc(0x10000)
    a.free(x)
    before = [list(b) for b in a._free]
    for _ in range(3):
        assert a.alloc(0x10000) == x
        assert a._free == before                      # handed out lazily: O(1), nothing split
        a.free(x)
    y = a.alloc(0x10000)
    assert y == x
    z = a.alloc(0x1000)                               # another call writes the lazy one in first
    assert z == x + 0x10000
    with pytest.raises(IovaNotAllocated):
        a.free(x + 0x1000)
    a.free(y)
    assert a.alloc(0x1000) == x                       # first fit again, not the cached size
    with pytest.raises(InvalidValue, match="not free"):
        a.reserve(x, 0x1000)


def test_lazy_allocation_is_really_taken():
    a = IovaAllocator([(0x100000, 0x11FFFF)])        # room for two 64 KiB blocks
    x = a.alloc(0x10000)
    a.free(x)
    assert a.alloc(0x10000) == x                      # lazily handed out
    with pytest.raises(InvalidValue, match="not free"):
        a.reserve(x, 0x1000)                          # but it is not free
    assert a.alloc(0x10000) == x + 0x10000
    with pytest.raises(IovaExhausted):
        a.alloc(0x1000)
    a.free(x)
    a.free(x + 0x10000)
    with pytest.raises(IovaNotAllocated, match=hex(x)):
        a.free(x)
    assert _free_space(a) == [(0x100000, 0x120000)]


def test_touching_and_overlapping_ranges_are_one_block():
    a = IovaAllocator([(0x100000, 0x1FFFFF), (0x200000, 0x2FFFFF), (0x280000, 0x3FFFFF)])
    assert _free_space(a) == [(0x100000, 0x400000)]
    assert a.alloc(0x300000) == 0x100000
