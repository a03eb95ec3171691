"""The record table of vfio/record/format.py is the codec's one home for each
record type: parse and write both go through it, one row per type."""

from __future__ import annotations

import pytest

from vfio.errors import Error
from vfio.record import format as F
from vfio.record.format import RecordFormatError

# A sample of every record type, with every field set (flags too).  A row
# without a sample fails test_every_row_has_a_sample: add one with the row.
SAMPLES = {
    F.REGION: F.Region(3, F.REGION_READ | F.REGION_MMAP, 3 << 40, 0x1000, 0xFE000000,
                       [F.PciBarInfo(F.BAR_MMIO64, 3, F.BAR_PREFETCHABLE),
                        F.RegionInfo(F.REGION_READ | F.REGION_MMAP, bytes(range(12))),
                        F.RegionData(0x10, b"\x01\x02\x03")]),
    F.DTPATH: F.DtPath("/soc/ethernet@ff0c0000", 0x40),
    F.DTINDEX: F.DtIndex(F.DT_PROP_INTERRUPTS, 5, 0x2),
    F.INTERRUPT: F.Interrupt(2, F.IRQ_EVENTFD | F.IRQ_NORESIZE, 32, [F.DtPath("/soc/x"), F.DtIndex(2, 1)]),
    F.PCI_CONFIG_SPACE: F.PciConfigSpace(0x10),
    F.PCI_BAR_INFO: F.PciBarInfo(F.BAR_PIO, 4, 0x8),
    F.PCI_INFO: F.PciInfo(0x10, 0xAB, 31, 7, 0x1),
    F.DEVICE_INFO: F.DeviceInfo(0x3, 9, 5, bytes(range(16)), 0x4),
    F.REGION_INFO: F.RegionInfo(0x8, b"\xaa" * 8, 0x20),     # CAPS; no R/W/MMAP, as its test regions
    F.REGION_DATA: F.RegionData(0x8, bytes(range(29)), 0x2),
    F.NOTE: F.Note("captured by a test \u00e9", 0x80),
    # cassettes (1.1)
    F.CASSETTE: F.Cassette("edu_driver.py 0000:00:04.0", 0x1),
    F.ACCESSES: F.Accesses([F.Access(F.ACCESS_READ, 4, 0, 0x4, 0xEDCBA987),
                            F.Access(F.ACCESS_WRITE, 8, 7, 0x98, (1 << 64) - 1)], 0x2),
    F.ACCESS_DATA: F.AccessData(7, 0x10, bytes(range(19)), F.ACCESS_DATA_WRITE | 0x10),
    F.IRQ_SET: F.IrqSet(2, 17, 1, 2, 0x24, bytes(8), 0x4),
    F.IRQ_EVENT: F.IrqEvent(1, 99, 3, 0x8),
    F.RESET_EVENT: F.ResetEvent(F.RESET_HOT, 5, 0x10),
    F.DMA_MAP: F.DmaMap(3, 0x300000, 0x2000, F.DMA_READ | F.DMA_WRITE_OK),
    F.DMA_UNMAP: F.DmaUnmap(40, 0x300000, 0x2000, 0x20),
    F.DMA_WRITE: F.DmaWrite(12, 0x301000, b"\x01\x02\x03", 0x40),
    F.MARKER: F.Marker(7, "factorial done", 0x80),
}


def _record_constants() -> dict[str, int]:
    """The module's record-type constants: the upper-case names TYPE_NAMES spells."""
    return {name: getattr(F, name) for name in F.TYPE_NAMES.values()}


def test_one_row_per_record_type():
    rows = F.RECORD_TYPES
    assert len({r.rtype for r in rows}) == len(rows)
    assert len({r.cls for r in rows}) == len(rows)
    assert len({r.name for r in rows}) == len(rows)
    # every constant names its own row, and TYPE_NAMES is the rows' names
    consts = _record_constants()
    assert sorted(consts.values()) == sorted(r.rtype for r in rows)
    for r in rows:
        assert consts[r.name] == r.rtype
        assert r.cls.type == r.rtype, r
        assert r.layout in F.LAYOUTS and r.struct is F.STRUCTS[r.layout]
        assert F.type_name(r.rtype) == r.name


def test_every_model_class_has_a_row():
    """No record class is encoded or decoded outside the table."""
    classes = {v for v in vars(F).values() if isinstance(v, type) and v.__module__ == F.__name__
               and isinstance(getattr(v, "type", None), int)}
    assert classes == {r.cls for r in F.RECORD_TYPES}


def test_every_row_has_a_sample():
    assert set(SAMPLES) == {r.rtype for r in F.RECORD_TYPES}


@pytest.mark.parametrize("row", F.RECORD_TYPES, ids=lambda r: r.name)
def test_row_encode_decode_round_trip(row):
    sample = SAMPLES[row.rtype]
    raw = row.encode(sample)
    assert F._S_HDR.unpack_from(raw, 0) == (row.rtype, len(raw), sample.flags)
    assert len(raw) >= row.size and (len(raw) == row.size) == row.exact
    depth = 1 if F._TOP in row.places else 2
    back = row.decode(F._Reader(raw, None, False), 0, len(raw), sample.flags, depth)
    assert back == sample
    assert row.encode(back) == raw


@pytest.mark.parametrize("row", F.RECORD_TYPES, ids=lambda r: r.name)
def test_row_round_trips_through_a_file(row):
    """The row's bytes are what write() puts in a file, and parse() gives the sample back."""
    sample = SAMPLES[row.rtype]
    if F._TOP in row.places:
        rec = F.DeviceRecord([sample])
    elif F.REGION in row.places:
        rec = F.DeviceRecord([F.Region(0, 0, 0, 0x100, 0, [sample])])
    else:
        rec = F.DeviceRecord([F.Interrupt(0, 0, 1, [sample])])
    data = F.write(rec)
    assert row.encode(sample) in data
    assert F.parse(data) == rec
    assert F.write(F.parse(data)) == data


@pytest.mark.parametrize("row", F.RECORD_TYPES, ids=lambda r: r.name)
def test_row_places_are_what_parse_enforces(row):
    """A record anywhere its row does not allow is refused, at its offset, naming its type."""
    raw = row.encode(SAMPLES[row.rtype])
    for parent in (F._TOP, F.REGION, F.INTERRUPT):
        if parent == F._TOP:
            pos = F.FILE_HEADER_LEN
            data = F.write(F.DeviceRecord([F.UnknownRecord(row.rtype, raw)]), validate=False)
        else:
            pos = F.FILE_HEADER_LEN + F.STRUCTS[F._L_Region if parent == F.REGION else F._L_Interrupt].size
            holder = F.Region(9, 0, 0, 0x100, 0) if parent == F.REGION else F.Interrupt(9, 0, 1)
            holder.children.append(F.UnknownRecord(row.rtype, raw))
            data = F.write(F.DeviceRecord([holder]), validate=False)
        if parent in row.places:
            F.parse(data)
            continue
        with pytest.raises(RecordFormatError) as ei:
            F.parse(data)
        assert ei.value.offset == pos and ei.value.record_type == row.rtype
        assert "nesting too deep" in ei.value.problem if row.nests else "belongs under" in ei.value.problem


@pytest.mark.parametrize("row", [r for r in F.RECORD_TYPES if r.once is not None], ids=lambda r: r.name)
def test_row_once_rule_is_what_parse_enforces(row):
    sample = SAMPLES[row.rtype]
    if F._TOP in row.places:
        rec = F.DeviceRecord([sample, sample])
        second = F.FILE_HEADER_LEN + F._align(len(row.encode(sample)))
    else:
        rec = F.DeviceRecord([F.Region(0, sample.vfio_flags if row.rtype == F.REGION_INFO else 0, 0, 0x100, 0,
                                       [sample, sample])])
        second = F.FILE_HEADER_LEN + F._S_REGION.size + F._align(len(row.encode(sample)))
    with pytest.raises(RecordFormatError) as ei:
        F.parse(F.write(rec, validate=False))
    assert ei.value.offset == second and ei.value.record_type == row.rtype
    assert "a second" in ei.value.problem


@pytest.mark.parametrize("row", F.RECORD_TYPES, ids=lambda r: r.name)
def test_row_fixed_size_is_what_parse_enforces(row):
    """A rec_len below the row's fixed part (or above it for an exact-size row) is refused."""
    raw = bytearray(row.encode(SAMPLES[row.rtype]))
    bad = [row.size - 4] if row.size > F.RECORD_HEADER_LEN else []
    if row.exact:
        bad.append(row.size + 4)
    for rec_len in bad:
        body = bytes(raw[:min(rec_len, len(raw))]).ljust(rec_len, b"\0")
        body = F._S_HDR.pack(row.rtype, rec_len, 0) + body[F.RECORD_HEADER_LEN:]
        if F._TOP in row.places:
            rec, pos = F.DeviceRecord([F.UnknownRecord(row.rtype, body)]), F.FILE_HEADER_LEN
        else:
            rec = F.DeviceRecord([F.Region(0, 0, 0, 0x100, 0, [F.UnknownRecord(row.rtype, body)])])
            pos = F.FILE_HEADER_LEN + F._S_REGION.size
        with pytest.raises(RecordFormatError) as ei:
            F.parse(F.write(rec, validate=False))
        assert ei.value.offset == pos and ei.value.record_type == row.rtype
        assert "rec_len" in ei.value.problem and str(row.size) in ei.value.problem


def test_unknown_type_has_no_row_and_is_kept():
    raw = F._S_HDR.pack(0x8123, 16, 5) + b"abcd"
    data = F.write(F.DeviceRecord([F.UnknownRecord(0x8123, raw), F.Note("x")]))
    rec = F.parse(data)
    assert rec.records[0] == F.UnknownRecord(0x8123, raw)
    assert F.write(rec) == data
    with pytest.raises(TypeError):
        F._encode(object())


def test_record_format_error_is_a_toolkit_error_and_a_value_error():
    with pytest.raises(Error) as ei:
        F.parse(b"not a record file at all, no......")
    assert isinstance(ei.value, RecordFormatError) and isinstance(ei.value, ValueError)
    assert ei.value.offset == 0 and "bad magic" in ei.value.problem
