"""MappedRegion over vfio.memory: checked accessors, refused over-wide values, bulk split, lifetime.

On replay (a memfd behind each region), so the mapping and pread/pwrite see the
same bytes: the oracle for every mapped access is the region's pread.
"""

from __future__ import annotations

import mmap
import os
import random
import struct

import pytest

from vfio.errors import InvalidValue, RegionAccessError
from vfio.record.replay import open_replay
from vfio.record.pytest_plugin import vfio_replay_device  # noqa: F401  (fixture, also via the entry point)

from tests.paths import RECORDS
from tests.unit.test_record_replay import device_record

PAGE = mmap.PAGESIZE
WIDTHS = (1, 2, 4, 8)


@pytest.fixture
def edu():
    with open_replay(os.path.join(RECORDS, "edu.vfiorec")) as dev:
        yield dev


@pytest.fixture
def sparse(vfio_replay_device):
    """BAR1: 16 KiB, mmap-able in pages 0 and 2 only (pages 1 and 3 go through pread/pwrite)."""
    return vfio_replay_device(device_record())


def _acc(bar, w):
    return getattr(bar, f"read{8 * w}"), getattr(bar, f"write{8 * w}")


@pytest.mark.parametrize("w", WIDTHS)
def test_over_wide_and_negative_values_are_refused_not_truncated(edu, w):
    with edu.region(0).map() as bar:
        rd, wr = _acc(bar, w)
        wr(0x100, 0x5A)
        for bad in (1 << (8 * w), (1 << (8 * w)) + 5, -1, -(1 << 70)):
            with pytest.raises(InvalidValue) as ei:
                wr(0x100, bad)
            msg = str(ei.value)
            assert f"{bad:#x}" in msg and f"{8 * w}-bit write at 0x100" in msg and "region 0 of" in msg
            assert rd(0x100) == 0x5A                          # nothing stored
        wr(0x100, (1 << (8 * w)) - 1)                          # the widest value fits
        assert rd(0x100) == (1 << (8 * w)) - 1
        with pytest.raises(InvalidValue, match="not an integer"):
            wr(0x100, 1.0)


def test_write32_of_2_to_the_32_plus_5_stores_nothing(edu):
    """The issue's example: this used to store 5."""
    with edu.region(0).map() as bar:
        bar.write32(0x40, 0x11111111)
        with pytest.raises(InvalidValue, match=r"value 0x100000005 does not fit the 32-bit write at 0x40"):
            bar.write32(0x40, 2 ** 32 + 5)
        assert edu.region(0).read32(0x40) == 0x11111111


def test_pread_path_refuses_over_wide_values_too(edu):
    cfg = edu.config
    with pytest.raises(InvalidValue, match="16-bit write at 0x4"):
        cfg.write16(4, 0x10004)
    with pytest.raises(InvalidValue):
        edu.region(0).write8(0, -1)


@pytest.mark.parametrize("w", WIDTHS)
def test_bounds_and_alignment_checked_at_every_width(edu, w):
    with edu.region(0).map() as bar:
        rd, wr = _acc(bar, w)
        size = bar.size
        wr(size - w, 1)
        assert rd(size - w) == 1 and edu.region(0).read(size - w, w) == (1).to_bytes(w, "little")
        for bad in (-w, size, size + w, 1 << 40, -(1 << 40)):
            with pytest.raises(RegionAccessError, match="outside"):
                rd(bad)
            with pytest.raises(RegionAccessError, match="outside"):
                wr(bad, 0)
        if w > 1:
            for off in range(1, w):
                with pytest.raises(RegionAccessError, match="naturally aligned"):
                    rd(0x200 + off)
                with pytest.raises(RegionAccessError, match="naturally aligned"):
                    wr(0x200 + off, 0)


def test_accessors_agree_with_pread_and_pwrite(edu):
    region = edu.region(0)
    rnd = random.Random(3)
    with region.map() as bar:
        for _ in range(400):
            w = rnd.choice(WIDTHS)
            off = rnd.randrange(0, 0x1000 // w) * w
            v = rnd.getrandbits(8 * w)
            _acc(bar, w)[1](off, v)
            assert region.read(off, w) == v.to_bytes(w, "little")
            region.write(off, (v ^ 0x5A).to_bytes(w, "little"))
            assert _acc(bar, w)[0](off) == v ^ 0x5A


def test_bulk_read_write_any_span(edu):
    region = edu.region(0)
    rnd = random.Random(9)
    with region.map() as bar:
        for _ in range(200):
            off, n = rnd.randrange(0, 0x2000), rnd.randrange(0, 600)
            data = bytes(rnd.randrange(256) for _ in range(n))
            bar.write(off, data)
            assert region.read(off, n) == data
            assert bar.read(off, n) == data
        block = os.urandom(4096)
        bar.write(0x3000, block)
        assert bar.read(0x3000, 4096) == block == region.read(0x3000, 4096)
        with pytest.raises(RegionAccessError, match="outside"):
            bar.read(bar.size - 4, 8)
        with pytest.raises(RegionAccessError, match="outside"):
            bar.write(bar.size - 4, bytes(8))


def test_sparse_region_holes_go_through_pread_pwrite(sparse):
    region = sparse.region(1)
    with region.map() as bar:
        assert bar.areas == [(0, PAGE), (2 * PAGE, PAGE)]
        for base in (0, PAGE, 2 * PAGE, 3 * PAGE):           # mapped, hole, mapped (not at 0), hole
            for w in WIDTHS:
                rd, wr = _acc(bar, w)
                v = (0xA5 << (8 * (w - 1))) | w
                wr(base + 8, v)
                assert rd(base + 8) == v
                assert region.read(base + 8, w) == v.to_bytes(w, "little")
            with pytest.raises(InvalidValue):
                bar.write32(base + 8, 1 << 32)
        data = bytes(range(256)) * 40                       # spans area, hole, area, hole
        bar.write(PAGE - 7, data[:2 * PAGE + 14])
        assert region.read(PAGE - 7, 2 * PAGE + 14) == data[:2 * PAGE + 14]
        assert bar.read(PAGE - 7, 2 * PAGE + 14) == data[:2 * PAGE + 14]


def test_read_only_mapping_reads_and_refuses_writes(edu):
    edu.region(0).write32(0, 0x010000ED)
    with edu.region(0).map(prot=mmap.PROT_READ) as bar:
        assert bar.read32(0) == 0x010000ED and bar.read(0, 4) == struct.pack("<I", 0x010000ED)
        with pytest.raises(RegionAccessError, match="read-only"):
            bar.write32(0, 1)
        with pytest.raises(RegionAccessError, match="read-only"):
            bar.write(0, b"\x01\x02")
        assert bar.read32(0) == 0x010000ED


def test_every_access_after_close_says_closed(edu):
    bar = edu.region(0).map()
    bar.close()
    bar.close()                                              # idempotent
    for w in WIDTHS:
        rd, wr = _acc(bar, w)
        with pytest.raises(RegionAccessError, match="mapping is closed"):
            rd(0)
        with pytest.raises(RegionAccessError, match="mapping is closed"):
            wr(0, 0)
    with pytest.raises(RegionAccessError, match="mapping is closed"):
        bar.read(0, 16)
    with pytest.raises(RegionAccessError, match="mapping is closed"):
        bar.write(0, b"x")


def test_device_close_releases_mappings_with_no_buffer_error(edu):
    bar = edu.region(0).map()
    bar.write64(8, 1)
    edu.close()                                              # closes its regions' mappings first
    with pytest.raises(RegionAccessError, match="closed"):
        bar.read64(8)
