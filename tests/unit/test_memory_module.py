"""vfio.memory: the mmap chokepoint, base addresses, checks, the bulk split and lifetime."""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import random

import pytest

from vfio import memory
from vfio.device import KernelBackend
from vfio.errors import InvalidValue, RegionAccessError, VfioError

PAGE = mmap.PAGESIZE


def _greedy(offset, length):
    """The oracle: at each place the widest aligned access that fits."""
    out, end = [], offset + length
    while offset < end:
        w = next(w for w in (8, 4, 2, 1) if offset % w == 0 and offset + w <= end)
        out.append((offset, w))
        offset += w
    return out


def test_runs_documented_examples():
    assert memory.runs(0x1, 0x16) == [(0x1, 1, 1), (0x2, 2, 1), (0x4, 4, 1), (0x8, 8, 1), (0x10, 4, 1),
                                      (0x14, 2, 1), (0x16, 1, 1)]
    assert memory.runs(0x1000, 0x1000) == [(0x1000, 8, 512)]             # a 4 KiB block: 512 words
    assert memory.runs(0x61, 7) == [(0x61, 1, 1), (0x62, 2, 1), (0x64, 4, 1)]
    assert memory.runs(0x64, 7) == [(0x64, 4, 1), (0x68, 2, 1), (0x6A, 1, 1)]
    assert memory.runs(0x84, 0x10) == [(0x84, 4, 1), (0x88, 8, 1), (0x90, 4, 1)]
    assert memory.runs(3, 0) == []


def test_pieces_are_the_greedy_natural_split():
    rnd = random.Random(11)
    for _ in range(3000):
        off, n = rnd.randrange(0, 300), rnd.randrange(0, 90)
        assert memory.pieces(off, n) == _greedy(off, n), (off, n)


def test_word_views_block_copy_round_trips_and_matches_memory():
    mm = memory.map_anonymous(PAGE, "test")
    views = memory.WordViews(mm, PAGE)
    rnd = random.Random(5)
    for _ in range(300):
        off = rnd.randrange(0, 200)
        n = rnd.randrange(0, 200)
        data = bytes(rnd.randrange(256) for _ in range(n))
        views.write_block(off, data)
        assert mm[off:off + n] == data
        assert views.read_block(off, n) == data
    assert views.v4[1] == int.from_bytes(mm[4:8], memory.BYTE_ORDER)
    views.release()
    with pytest.raises(IndexError):                  # released: every view is empty
        views.v8[0]
    mm.close()                                       # no export left: no BufferError


def test_word_views_refuse_over_wide_values_without_storing():
    mm = memory.map_anonymous(PAGE, "test")
    views = memory.WordViews(mm, PAGE)
    views.v4[0] = 7
    for w, v in ((1, 256), (2, 1 << 16), (4, 2 ** 32 + 5), (8, 1 << 64), (4, -1)):
        with pytest.raises(ValueError):
            views.by_width[w][0] = v
    assert views.v4[0] == 7
    views.release()
    memory.release(mm)


def test_check_value_names_value_width_offset():
    assert memory.check_value(0xFFFFFFFF, 4, 0, "r") == 0xFFFFFFFF
    assert memory.check_value(True, 1, 0, "r") == 1
    with pytest.raises(InvalidValue, match=r"r: value 0x100000005 does not fit the 32-bit write at 0x10"):
        memory.check_value(2 ** 32 + 5, 4, 0x10, "r")
    with pytest.raises(InvalidValue, match=r"value -0x1 does not fit the 8-bit write at 0x3"):
        memory.check_value(-1, 1, 3, "r")
    with pytest.raises(InvalidValue, match="1.5 is not an integer"):
        memory.check_value(1.5, 2, 0, "r")


def test_checks_refuse_with_region_access_error():
    memory.check_span(0, 16, 16, "x")
    with pytest.raises(RegionAccessError, match="x: access of 4 bytes at 0xe is outside its 0x10 bytes"):
        memory.check_span(0xE, 4, 16, "x")
    with pytest.raises(RegionAccessError, match="not naturally aligned"):
        memory.check_access(2, 4, 16, "x")
    with pytest.raises(RegionAccessError, match="only 1, 2, 4 or 8"):
        memory.check_access(0, 3, 16, "x")
    with pytest.raises(RegionAccessError, match="outside"):
        memory.check_access(-8, 8, 16, "x")


def test_map_fd_keeps_errno_and_says_what():
    r, w = os.pipe()
    try:
        with pytest.raises(VfioError) as ei:
            memory.map_fd(r, PAGE, 0, mmap.PROT_READ, "mmap of the pipe")
        assert ei.value.errno == errno.ENODEV and "mmap of the pipe" in str(ei.value)
    finally:
        os.close(r)
        os.close(w)
    with pytest.raises(VfioError) as ei:
        memory.map_fd(r, PAGE, 0, memory.PROT_RW, "closed fd")
    assert ei.value.errno == errno.EBADF
    with pytest.raises(InvalidValue, match="length must be positive"):
        memory.map_fd(0, 0, 0, memory.PROT_RW, "empty")


def test_kernel_backend_mmap_goes_through_the_chokepoint():
    fd = os.open("/dev/null", os.O_RDWR)
    kb = KernelBackend(fd, "0000:00:04.0")
    try:
        with pytest.raises(VfioError) as ei:
            kb.mmap(0, PAGE)
        assert ei.value.errno == errno.ENODEV
        assert "mmap 0x1000 bytes at 0x0 on 0000:00:04.0" in str(ei.value)
    finally:
        kb.close()


def test_base_address_and_release_with_a_live_view():
    mm = memory.map_anonymous(PAGE, "test")
    mm[:4] = b"abcd"
    addr = memory.base_address(mm)
    assert ctypes.string_at(addr, 4) == b"abcd"
    view = memoryview(mm)
    memory.release(mm)                               # BufferError swallowed: the view keeps it mapped
    assert bytes(view[:4]) == b"abcd"
    view.release()
    memory.release(mm)                               # idempotent
    assert mm.closed
