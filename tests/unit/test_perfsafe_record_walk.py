"""The decoder's fast paths (the one-test walk of ``_Reader.sequence`` and the
one-pass walk of a region's sub-records in ``_dec_region``) accept and refuse
exactly what the generic path does -- each record through ``_Reader.record``,
the region's rules through ``_region_fault`` -- with the same model or the same
offset, record type and wording, on every single-byte mutation of a file that
has every kind of sub-record, padding, an unknown record and a note."""

from __future__ import annotations

import pytest

from vfio.record import format as F


def sample() -> bytes:
    region = F.Region(0, F.REGION_READ | F.REGION_MMAP, 0, 0x1000, 0xFE000000, [
        F.PciBarInfo(F.BAR_MMIO32, 0), F.RegionInfo(F.REGION_READ | F.REGION_MMAP, bytes(8)),
        F.RegionData(0, b"abcdefg"), F.RegionData(0x10, b"xy"), F.DtPath("/soc/x"), F.DtIndex(0, 1)])
    cfg = F.Region(7, F.REGION_READ, 7 << 40, 256, 0, [F.PciConfigSpace(), F.RegionData(0, bytes(range(20)))])
    odd = F.Region(1, 0, 1 << 40, 64, 0, [F.UnknownRecord(0x8123, F._S_HDR.pack(0x8123, 13, 0) + b"z"),
                                          F.RegionData(0x20, b"12"), F.RegionData(0, b"34")])
    return F.write(F.DeviceRecord([F.PciInfo(0, 0, 3, 0), region, cfg, odd,
                                   F.Interrupt(0, F.IRQ_EVENTFD, 1, [F.DtIndex(2, 0)]), F.Note("a note")]))


def outcome(buf: bytes, **kw):
    try:
        return "model", F.parse(buf, **kw)
    except F.RecordFormatError as e:
        return "refused", (e.offset, e.record_type, e.problem)


def mutations(b: bytes):
    yield b
    for i in range(F.FILE_HEADER_LEN, len(b)):
        for v in {0, 1, 7, 0x80, 0xFF, b[i] ^ 0x08, (b[i] + 4) & 0xFF}:
            if v != b[i]:
                yield b[:i] + bytes([v]) + b[i + 1:]


@pytest.fixture
def generic(monkeypatch):
    """parse with no fast path: no type allowed anywhere as far as the fast tests
    know, so every record goes through _Reader.checked/record and every region
    through rd.sequence and _region_fault."""
    def run(buf, **kw):
        with monkeypatch.context() as m:
            m.setattr(F, "_ALLOWED", {parent: {} for parent in F._ALLOWED})
            m.setattr(F, "_REGION_KIDS", {})
            return outcome(buf, **kw)
    return run


def test_sample_takes_the_fast_paths():
    b = sample()
    kind, rec = outcome(b)
    assert kind == "model" and F.write(rec) == b
    assert [type(c) for c in rec.regions[1].children][0] is F.UnknownRecord


def test_fast_and_generic_paths_agree_on_every_mutation(generic):
    b = sample()
    n = refused = 0
    for m in mutations(b):
        fast = outcome(m)
        assert fast == generic(m), m.hex()
        n += 1
        refused += fast[0] == "refused"
    assert n > 2000 and 0 < refused < n          # both outcomes were exercised


@pytest.mark.parametrize("limit", [3, 9, 12, 13, 14, 20])
def test_record_limit_named_alike(generic, limit):
    b = sample()
    assert outcome(b, max_records=limit) == generic(b, max_records=limit)


def _region_of(*kids) -> bytes:
    """A file whose one region holds ``kids`` as given (written unvalidated, so a
    region may break its rules)."""
    return F.write(F.DeviceRecord([F.PciInfo(0, 0, 3, 0),
                                   F.Region(0, F.REGION_READ, 0, 0x100, 0, list(kids))]), validate=False)


@pytest.mark.parametrize("kids", [
    [F.PciBarInfo(F.BAR_MMIO32, 0), F.PciBarInfo(F.BAR_MMIO32, 1)],                  # a second BAR info
    [F.RegionInfo(F.REGION_READ, b""), F.RegionInfo(F.REGION_READ, b"")],            # a second REGION_INFO
    [F.RegionInfo(F.REGION_READ | F.REGION_WRITE, bytes(8))],                         # flags disagree
    [F.RegionInfo(F.REGION_READ, bytes(4)), F.PciBarInfo(F.BAR_MMIO64, 2)],
    [F.RegionData(0x10, b"ab"), F.RegionData(0, b"cd")],                              # out of order: accepted
    [F.RegionData(0, b"abcd"), F.RegionData(2, b"cd")],                               # overlapping
    [F.RegionData(0xF0, bytes(0x20))],                                                # past the region
    [F.RegionData(0, b""), F.RegionData(0, b"")],
], ids=["two-bars", "two-infos", "info-flags", "info-bar", "data-order", "data-overlap", "data-past",
        "empty-data"])
def test_region_rules_named_alike(generic, kids):
    """The region walk's own decoding of REGION_DATA, PCI_BAR_INFO and REGION_INFO
    keeps every region rule, in the order and wording the generic path has."""
    b = _region_of(*kids)
    assert outcome(b) == generic(b)
    assert outcome(b, lazy=True) == generic(b, lazy=True)
