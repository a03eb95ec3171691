"""The record decoder's fast path (checks inlined in the walk, strings decoded
in one go, padding counted without a copy) refuses exactly what the checks it
replaced refused, at the same offsets, for every kind of buffer parse takes;
and a lazily mapped file gives the same model as an eager load."""

from __future__ import annotations

import mmap
import os
import struct

import pytest

from vfio.record import format as F
from tests.paths import RECORDS

BUFFERS = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}


def region_file() -> bytes:
    kids = [F.PciBarInfo(F.BAR_MMIO32, 0), F.RegionInfo(F.REGION_READ, bytes(8)), F.RegionData(0, b"abcd")]
    return F.write(F.DeviceRecord([F.Region(0, F.REGION_READ, 0, 4096, 0, kids), F.Note("a note")]))


def refusal(buf, **kw):
    with pytest.raises(F.RecordFormatError) as ei:
        F.parse(buf, **kw)
    return ei.value.offset, ei.value.record_type, ei.value.problem


def test_the_record_limit_counts_sub_records_and_names_the_first_one_over():
    b = region_file()
    # region at 32, its sub-records at 72 (BAR info, 20 bytes + 4 padding), 96 (region info), 120 (data)
    assert F.parse(b, max_records=5).regions[0].data[0].data == b"abcd"
    assert refusal(b, max_records=3)[:2] == (120, F.REGION_DATA)
    assert refusal(b, max_records=4)[:2] == (152, F.NOTE)          # the note after the region
    assert refusal(b, max_records=1)[:2] == (72, F.PCI_BAR_INFO)


@pytest.mark.parametrize("kind", BUFFERS)
def test_padding_and_strings_refused_alike_in_every_buffer_kind(kind):
    b = bytearray(region_file())
    note = 152
    cases = {}
    bad_pad = bytearray(b)
    bad_pad[72 + 20] = 1                                            # the BAR info's padding
    cases["padding"] = (bad_pad, (92, F.PCI_BAR_INFO))
    no_nul = bytearray(b)
    no_nul[note + 12 + 6] = ord("!")                                # "a note\0" -> "a note!"
    cases["no NUL"] = (no_nul, (note, F.NOTE))
    early_nul = bytearray(b)
    early_nul[note + 12 + 1] = 0                                    # "a\0note\0"
    cases["early NUL"] = (early_nul, (note + 12 + 2, F.NOTE))
    bad_utf8 = bytearray(b)
    bad_utf8[note + 12 + 2] = 0xFF
    cases["not UTF-8"] = (bad_utf8, (note + 12 + 2, F.NOTE))
    for name, (data, where) in cases.items():
        assert refusal(bytes(data))[:2] == where, name
        assert refusal(BUFFERS[kind](data)) == refusal(bytes(data)), name


def test_an_mmap_is_checked_as_bytes_are(tmp_path):
    b = bytearray(region_file())
    b[72 + 21] = 7
    p = tmp_path / "bad.vfiorec"
    p.write_bytes(b)
    with open(p, "rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert refusal(m) == refusal(bytes(b))


@pytest.mark.parametrize("name", sorted(n for n in os.listdir(RECORDS) if n.endswith(".vfiorec")))
def test_lazy_region_data_equal_eager(name):
    path = os.path.join(RECORDS, name)
    eager = F.load(path)
    with F.MappedRecord(path) as m:
        lazy = m.record
        assert lazy == eager
        for index, region in eager.regions.items():
            lr = lazy.regions[index]
            assert all(isinstance(d.data, memoryview) for d in lr.data)
            assert lr.contents(0, region.size) == region.contents(0, region.size)


def test_lazy_access_to_a_large_file_reads_one_region(tmp_path):
    """A 64 MiB BAR next to config space: the mapped record's config space is
    right, and its BAR data is a view of the file, not a copy."""
    big = 64 << 20
    small = F.write(F.DeviceRecord([F.Region(7, F.REGION_READ, 0, 256, 0,
                                             [F.PciConfigSpace(), F.RegionData(0, bytes(range(256)))])]))
    head = bytearray(small) + bytes(-len(small) % 8)
    head += F._S_REGION.pack(F.REGION, 40 + 24 + big, F.REGION_READ, 2, 1 << 40, big, 0)
    head += F._S_DATA.pack(F.REGION_DATA, 24 + big, 0, 0, 0)
    struct.pack_into("<Q", head, 24, len(head) + big)
    p = tmp_path / "big.vfiorec"
    with open(p, "wb") as f:
        f.write(head)
        f.truncate(len(head) + big)
    with F.MappedRecord(p) as m:
        assert m.record.config_region.contents(0, 256) == bytes(range(256))
        bar = m.record.regions[2].data[0].data
        assert isinstance(bar, memoryview) and len(bar) == big and bar.obj is m._map
