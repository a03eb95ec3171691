"""The cassette record types (records/FORMAT.md "Cassettes", version 1.1): byte layouts,
round trips, what a reader and replay refuse, and that a cassette is a record file."""

from __future__ import annotations

import io
import os
import struct

import pytest

from tests.paths import RECORDS
from vfio.record import cassette as C
from vfio.record import format as F
from vfio.record.format import RecordFormatError
from vfio.record.replay import open_replay

SHIPPED = [os.path.join(RECORDS, n) for n in ("edu-session.vfiorec", "nvme-identify-session.vfiorec")]


def _file(*recs, minor=F.CASSETTE_MINOR) -> bytes:
    return F.write(F.DeviceRecord(list(recs), version_minor=minor), validate=False)


def test_access_entry_bytes_are_the_documented_layout():
    raw = F._enc_accesses(F.Accesses([F.Access(F.ACCESS_WRITE, 4, 7, 0x1234, 0xDEADBEEF)]))
    assert raw == struct.pack("<IIII", F.ACCESSES, 40, 0, 0) + struct.pack("<BBHIQQ", 1, 4, 0, 7, 0x1234, 0xDEADBEEF)
    assert F.ACCESS_ENTRY_LEN == 24


def test_event_layouts_match_the_spec_offsets():
    assert F._enc_irqev(F.IrqEvent(2, 99, 3)) == struct.pack("<IIIIQII", F.IRQ_EVENT, 32, 0, 2, 99, 3, 0)
    assert F._enc_dmamap(F.DmaMap(5, 0x300000, 0x2000, 3)) == \
        struct.pack("<IIIIQQQ", F.DMA_MAP, 40, 3, 0, 5, 0x300000, 0x2000)
    assert F._enc_dmawrite(F.DmaWrite(6, 0x1000, b"ab")) == \
        struct.pack("<IIIIQQ", F.DMA_WRITE, 34, 0, 0, 6, 0x1000) + b"ab"
    assert F._enc_marker(F.Marker(1, "x")) == struct.pack("<IIIIQ", F.MARKER, 26, 0, 0, 1) + b"x\0"
    assert F._enc_irqset(F.IrqSet(1, 2, 0, 1, 0x24, b"\0\0\0\0")) == \
        struct.pack("<IIIIQIIII", F.IRQ_SET, 44, 0, 1, 2, 0, 1, 0x24, 0) + bytes(4)


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_shipped_cassettes_round_trip_byte_for_byte(path):
    data = open(path, "rb").read()
    rec = F.parse(data)
    assert rec.version_minor == 1 and rec.cassette is not None
    assert F.write(rec) == data
    assert F.parse(F.write(rec)) == rec


@pytest.mark.parametrize("path", SHIPPED, ids=os.path.basename)
def test_a_cassette_is_a_record_file(path):
    """Replay of the layout and vfio-inspect read it as any record file; inspect adds the summary."""
    from vfio.host import inspect as I
    with open_replay(path) as dev:
        assert dev.info.is_pci and dev.region(0).size > 0
    out = io.StringIO()
    assert I.main([path], out=out) == 0
    text = out.getvalue()
    assert "cassette: " in text and "accesses (" in text and "interrupts index" in text
    rep = I.record_report(path)
    assert rep["cassette"]["accesses"] == rep["cassette"]["reads"] + rep["cassette"]["writes"] > 10


def _entry(op=0, width=4, reserved=0, index=0, offset=0, value=0) -> bytes:
    return struct.pack("<BBHIQQ", op, width, reserved, index, offset, value)


@pytest.mark.parametrize("entry,at,problem", [
    (_entry(op=2), 0, "op 2"),
    (_entry(width=3), 1, "width 3"),
    (_entry(reserved=1), 2, "reserved field"),
    (_entry(width=2, value=0x10000), 16, "wider than 2 bytes"),
])
def test_a_bad_access_entry_is_refused_at_its_offset(entry, at, problem):
    good = _entry()
    rec = struct.pack("<IIII", F.ACCESSES, 16 + 48, 0, 0) + good + entry
    data = _file(F.UnknownRecord(F.ACCESSES, rec))
    with pytest.raises(RecordFormatError) as ei:
        F.parse(data)
    assert ei.value.offset == F.FILE_HEADER_LEN + 16 + 24 + at
    assert ei.value.record_type == F.ACCESSES and problem in ei.value.problem


def test_entries_that_are_not_whole_are_refused():
    rec = struct.pack("<IIII", F.ACCESSES, 16 + 20, 0, 0) + bytes(20)
    with pytest.raises(RecordFormatError, match="whole number of 24-byte entries") as ei:
        F.parse(_file(F.UnknownRecord(F.ACCESSES, rec)))
    assert ei.value.offset == F.FILE_HEADER_LEN


@pytest.mark.parametrize("raw,problem", [
    (struct.pack("<IIIIQ", F.ACCESS_DATA, 24, 0, 0, 0), "0 bytes"),
    (struct.pack("<IIIIQQ", F.DMA_WRITE, 32, 0, 0, 0, 0), "0 bytes"),
    (struct.pack("<IIIIQQ", F.DMA_WRITE, 34, 0, 0, 0, (1 << 64) - 1) + b"xy", "past 2^64"),
    (struct.pack("<IIIIQQQ", F.DMA_MAP, 40, 0, 0, 0, 1 << 63, (1 << 63) + 1), "past 2^64"),
    (struct.pack("<IIIIQII", F.IRQ_EVENT, 32, 0, 1, 0, 0, 5), "reserved"),
    (struct.pack("<IIIIQ", F.MARKER, 25, 0, 0, 0) + b"x", "NUL"),
], ids=["empty-access", "empty-dma-write", "dma-write-wraps", "dma-map-wraps", "irq-reserved", "marker-no-nul"])
def test_bad_session_records_are_refused(raw, problem):
    with pytest.raises(RecordFormatError) as ei:
        F.parse(_file(F.UnknownRecord(struct.unpack_from("<I", raw)[0], raw)))
    assert problem in ei.value.problem and ei.value.offset is not None


def test_a_second_cassette_record_is_refused():
    with pytest.raises(RecordFormatError, match="a second CASSETTE"):
        F.parse(_file(F.Cassette("a"), F.Cassette("b")))


def test_a_1_0_reader_keeps_the_session_as_unknown_records():
    """What FORMAT.md promises readers of 1.0: unknown types kept in place, written back unchanged."""
    data = open(SHIPPED[0], "rb").read()
    rows = F._BY_TYPE
    saved = dict(rows)
    try:
        for t in range(F.CASSETTE, F.MARKER + 1):
            rows.pop(t)
        allowed = {p: dict(v) for p, v in F._ALLOWED.items()}
        for t in range(F.CASSETTE, F.MARKER + 1):
            F._ALLOWED[F._TOP].pop(t, None)
        rec = F.parse(data)
        assert any(type(r) is F.UnknownRecord and r.type == F.ACCESSES for r in rec.records)
        assert F.write(rec, validate=False) == data
    finally:
        rows.clear()
        rows.update(saved)
        F._ALLOWED.clear()
        F._ALLOWED.update(allowed)


def _layout() -> list:
    return [F.DeviceInfo(0x3, 9, 5), F.Region(0, F.REGION_READ | F.REGION_WRITE, 0, 0x1000, 0,
                                             [F.RegionInfo(F.REGION_READ | F.REGION_WRITE)]),
            F.Interrupt(1, F.IRQ_EVENTFD, 1)]


@pytest.mark.parametrize("events,problem", [
    ([F.Accesses([F.Access(0, 4, 0, 0, 1)]), F.IrqEvent(1, 0, 0)], "at 0, but 1 accesses"),
    ([F.Accesses([F.Access(0, 4, 0, 0xFFE, 1)])], "outside the regions"),
    ([F.Accesses([F.Access(0, 4, 3, 0, 1)])], "outside the regions"),
    ([F.IrqEvent(1, 0, 1)], "no such IRQ vector"),
])
def test_replay_refuses_a_session_no_recording_could_make(tmp_path, events, problem):
    path = tmp_path / "bad.vfiorec"
    recs = _layout() + [F.Cassette("t")] + events
    path.write_bytes(F.write(F.DeviceRecord(recs, version_minor=1)))
    with pytest.raises(RecordFormatError) as ei:
        C.open_cassette(path)
    assert problem in str(ei.value) and "replay refuses it" in str(ei.value)
    assert ei.value.offset == F.parse(path.read_bytes()).offsets[len(recs) - 1]


def test_a_record_file_without_a_session_is_not_a_cassette():
    with pytest.raises(RecordFormatError, match="not a cassette"):
        C.open_cassette(os.path.join(RECORDS, "edu.vfiorec"))
