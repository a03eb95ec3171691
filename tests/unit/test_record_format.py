"""The record-file codec (records/FORMAT.md): layouts, round trips, strictness, fuzz."""

from __future__ import annotations

import os
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from vfio.record import format as F
from vfio.record.format import RecordFormatError, parse, write

from tests.paths import RECORDS


# ---------------------------------------------------------------------------
# layouts: the cstruct declarations and the compiled structs agree
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("layout", F.LAYOUTS, ids=lambda c: c.__name__)
def test_compiled_struct_matches_cstruct(layout):
    s = F.STRUCTS[layout]
    assert s.size == layout.__size__
    rnd = random.Random(layout.__name__)
    for _ in range(20):
        raw = bytes(rnd.randrange(256) for _ in range(s.size))
        obj = layout()
        obj.unpack(raw)
        assert obj.pack() == raw
        values = s.unpack(raw)
        assert [getattr(obj, n) for n in layout.__fields_types__] == list(values)


def test_layout_sizes_match_format_md():
    sizes = {F._L_FileHeader: 32, F._L_RecordHeader: 12, F._L_Region: 40, F._L_DtIndex: 20,
             F._L_Interrupt: 24, F._L_PciBarInfo: 20, F._L_PciInfo: 20, F._L_DeviceInfo: 24,
             F._L_RegionInfo: 16, F._L_RegionData: 24}
    assert {k: k.__size__ for k in sizes} == sizes


# ---------------------------------------------------------------------------
# the two examples of FORMAT.md
# ---------------------------------------------------------------------------
def pci_example() -> F.DeviceRecord:
    cfg = bytearray(256)
    struct.pack_into("<HH", cfg, 0, 0x1234, 0x11E8)
    return F.DeviceRecord([
        F.PciInfo(0, 0, 3, 0),
        F.DeviceInfo(0x2, 9, 5),
        F.Region(0, F.REGION_READ | F.REGION_WRITE | F.REGION_MMAP | F.REGION_PHYS, 0, 0x100000, 0xFE800000,
                 [F.PciBarInfo(F.BAR_MMIO32, 0), F.RegionInfo(0x7), F.RegionData(0, struct.pack("<I", 0x010000ED))]),
        F.Region(7, F.REGION_READ | F.REGION_WRITE, 7 << 40, 256, 0,
                 [F.PciConfigSpace(), F.RegionInfo(0x3), F.RegionData(0, bytes(cfg))]),
        F.Interrupt(0, F.IRQ_EVENTFD | F.IRQ_MASKABLE | F.IRQ_AUTOMASKED, 1),
        F.Interrupt(1, F.IRQ_EVENTFD | F.IRQ_NORESIZE, 1),
        F.Note("captured by hand"),
    ])


def dt_example() -> F.DeviceRecord:
    node = "/soc/ethernet@ff0b0000"
    return F.DeviceRecord([
        F.DeviceInfo(0x5, 2, 1),
        F.Region(0, F.REGION_READ | F.REGION_WRITE | F.REGION_MMAP | F.REGION_PHYS, 0, 0x1000, 0xFF0B0000,
                 [F.DtPath(node), F.DtIndex(F.DT_PROP_REG, 0)]),
        F.Region(1, F.REGION_READ | F.REGION_WRITE | F.REGION_PHYS, 0x1000, 0x100, 0xFF0C0000,
                 [F.DtPath(node), F.DtIndex(F.DT_PROP_REG, 1)]),
        F.Interrupt(0, F.IRQ_EVENTFD | F.IRQ_MASKABLE | F.IRQ_AUTOMASKED, 1,
                    [F.DtPath(node), F.DtIndex(F.DT_PROP_INTERRUPTS, 0)]),
    ])


def test_pci_example_bytes():
    b = write(pci_example())
    assert b[:8] == b"VFIOREC\x00"
    assert struct.unpack_from("<HHIIIQ", b, 8) == (1, 0, 0, 32, 0, len(b))
    # first record: PCI_INFO 0000:00:03.0, 20 bytes, then 4 bytes of zero padding
    assert struct.unpack_from("<IIIIBBBB", b, 32) == (F.PCI_INFO, 20, 0, 0, 0, 3, 0, 0)
    assert b[52:56] == bytes(4)
    # then DEVICE_INFO with no caps
    assert struct.unpack_from("<IIIIII", b, 56) == (F.DEVICE_INFO, 24, 0, 2, 9, 5)
    # then REGION 0: fixed part, and its first sub-record right after it
    assert struct.unpack_from("<IIIIQQQ", b, 80) == (F.REGION, 40 + 24 + 16 + 28, 0x17, 0, 0, 0x100000, 0xFE800000)
    assert struct.unpack_from("<IIIII", b, 120) == (F.PCI_BAR_INFO, 20, 0, 1, 0)
    rec = parse(b)
    assert rec == pci_example()
    assert rec.regions[0].bar.bar_type == F.BAR_MMIO32
    assert rec.regions[0].contents(0, 4) == struct.pack("<I", 0x010000ED)
    assert rec.config_region.index == 7
    assert rec.pci_info.bdf == "0000:00:03.0"


def test_dt_example_bytes():
    b = write(dt_example())
    rec = parse(b)
    assert rec == dt_example()
    assert rec.pci_info is None
    r0 = rec.regions[0]
    assert r0.dt_path.path == "/soc/ethernet@ff0b0000"
    # DTPATH: header + string + NUL, padded to 8 before DTINDEX
    first_kid = 32 + 24 + 40
    assert struct.unpack_from("<II", b, first_kid) == (F.DTPATH, 12 + 23)
    assert b[first_kid + 12:first_kid + 35] == b"/soc/ethernet@ff0b0000\x00"
    assert rec.interrupts[0].children[1] == F.DtIndex(F.DT_PROP_INTERRUPTS, 0)


# ---------------------------------------------------------------------------
# round trips (hypothesis)
# ---------------------------------------------------------------------------
u8 = st.integers(0, 0xFF)
u32 = st.integers(0, 0xFFFFFFFF)
u64 = st.integers(0, 0xFFFFFFFFFFFFFFFF)
text = st.text(st.characters(blacklist_characters="\x00", blacklist_categories=("Cs",)), max_size=40)
blob = st.binary(max_size=64)


def unknown(draw_type):
    return st.builds(lambda t, fl, body: F.UnknownRecord(t, struct.pack("<III", t, 12 + len(body), fl) + body),
                     draw_type, u32, blob)


unknown_top = unknown(st.integers(0x8100, 0xFFFFFFFF))
unknown_sub = unknown(st.sampled_from([0x8100, 0x9000, 0x12345678]))
dt_kids = st.one_of(st.builds(F.DtPath, text, u32), st.builds(F.DtIndex, u32, u32, u32), unknown_sub)


@st.composite
def regions(draw, index):
    size = draw(st.integers(0, 1 << 20))
    flags = draw(u32)
    kids = draw(st.lists(dt_kids, max_size=3))
    if draw(st.booleans()):
        kids.append(F.RegionInfo((flags & 7) | (draw(u32) & ~7), draw(blob), draw(u32)))
    if draw(st.booleans()):
        kids.append(F.PciBarInfo(draw(u32), draw(u32), draw(u32)))
    if draw(st.booleans()):
        kids.append(F.PciConfigSpace(draw(u32)))
    pos = 0
    for _ in range(draw(st.integers(0, 3))):
        data = draw(st.binary(min_size=1, max_size=40))
        pos += draw(st.integers(0, 100))
        if pos + len(data) > size:
            break
        kids.append(F.RegionData(pos, data, draw(u32)))
        pos += len(data)
    draw(st.randoms()).shuffle(kids)
    return F.Region(index, flags, draw(u64), size, draw(u64), kids)


@st.composite
def device_records(draw):
    recs = []
    if draw(st.booleans()):
        recs.append(F.PciInfo(draw(u32), draw(u8), draw(st.integers(0, 31)), draw(st.integers(0, 7)), draw(u32)))
    if draw(st.booleans()):
        recs.append(F.DeviceInfo(draw(u32), draw(u32), draw(u32), draw(blob), draw(u32)))
    for index in draw(st.sets(u32, max_size=4)):
        recs.append(draw(regions(index)))
    for index in draw(st.sets(u32, max_size=3)):
        recs.append(F.Interrupt(index, draw(u32), draw(u32), draw(st.lists(dt_kids, max_size=2))))
    recs += draw(st.lists(st.one_of(st.builds(F.Note, text, u32), unknown_top), max_size=3))
    draw(st.randoms()).shuffle(recs)
    extra = draw(st.sampled_from([b"", bytes(8), b"newer-minor-hdr!"]))
    return F.DeviceRecord(recs, draw(st.integers(0, 0xFFFF)), draw(u32), extra)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(device_records())
def test_round_trip_model(rec):
    b = write(rec)
    back = parse(b)
    assert back == rec
    assert write(back) == b
    assert len(b) % 8 == 0


@settings(max_examples=200, deadline=None)
@given(device_records(), st.data())
def test_round_trip_bytes_after_mutation(rec, data):
    """Any mutation that still parses must write back to exactly the same bytes."""
    b = bytearray(write(rec))
    for _ in range(data.draw(st.integers(1, 4))):
        i = data.draw(st.integers(0, len(b) - 1))
        b[i] = data.draw(u8)
    try:
        parsed = parse(bytes(b))
    except RecordFormatError:
        return
    assert write(parsed) == bytes(b)


# ---------------------------------------------------------------------------
# strictness: each refusal names offset, type and problem
# ---------------------------------------------------------------------------
def good() -> bytes:
    return write(pci_example())


def patch(b: bytes, off: int, fmt: str, *vals) -> bytes:
    out = bytearray(b)
    struct.pack_into(fmt, out, off, *vals)
    return bytes(out)


def file_len_fixed(b: bytes) -> bytes:
    return patch(b, 24, "<Q", len(b))


def expect(b: bytes, offset: int, rtype, words: str):
    with pytest.raises(RecordFormatError) as ei:
        parse(b)
    e = ei.value
    assert (e.offset, e.record_type) == (offset, rtype), str(e)
    assert words in str(e)
    return e


REGION0 = 80          # offset of REGION 0 in good()
REGION0_KID = 120     # its first sub-record (PCI_BAR_INFO)


def test_truncated_header():
    expect(good()[:20], 0, None, "truncated file header")


def test_bad_magic_and_version():
    expect(patch(good(), 0, "<8s", b"VFIOREX\0"), 0, None, "bad magic")
    expect(patch(good(), 8, "<H", 2), 8, None, "version 2.0")


def test_truncated_file():
    b = good()
    expect(b[:-8], len(b) - 8, None, "truncated")
    # with a file_len that agrees, the cut shows as a record running past the end
    expect(file_len_fixed(b[:REGION0 + 30]), REGION0, F.REGION, "past the end of the file")
    expect(file_len_fixed(b[:REGION0 + 8]), REGION0, None, "truncated record header")


def test_trailing_bytes():
    expect(good() + bytes(8), len(good()), None, "trailing bytes")


def test_rec_len_smaller_than_fixed_part():
    expect(patch(good(), REGION0 + 4, "<I", 20), REGION0, F.REGION, "smaller than the fixed part")
    expect(patch(good(), REGION0 + 4, "<I", 4), REGION0, F.REGION, "smaller than the 12-byte record header")


def test_rec_len_past_parent():
    # PCI_BAR_INFO claims more than REGION 0 holds
    expect(patch(good(), REGION0_KID + 4, "<I", 4000), REGION0_KID, F.PCI_BAR_INFO, "past the end of its parent REGION")


def test_fixed_size_record_with_wrong_length():
    # PCI_BAR_INFO rec_len 24 instead of 20: eats the padding
    expect(patch(good(), REGION0_KID + 4, "<I", 24), REGION0_KID, F.PCI_BAR_INFO, "not the record's size")


def test_misaligned_header_len():
    expect(patch(good(), 16, "<I", 36), 16, None, "misaligned")


def test_nonzero_padding():
    expect(patch(good(), 52, "<B", 1), 52, F.PCI_INFO, "non-zero padding")


def test_nonzero_reserved():
    expect(patch(good(), 51, "<B", 1), 51, F.PCI_INFO, "reserved")
    expect(patch(good(), 20, "<I", 1), 20, None, "reserved")


def test_sub_record_under_wrong_parent():
    rec = F.DeviceRecord([F.Interrupt(0, 0, 1, [F.PciBarInfo(1, 0)])])
    b = F.write(F.DeviceRecord([F.Interrupt(0, 0, 1, [F.DtIndex(0, 0)])]), validate=False)
    b = patch(b, 32 + 24, "<I", F.PCI_BAR_INFO)    # DTINDEX -> PCI_BAR_INFO (same size)
    expect(b, 56, F.PCI_BAR_INFO, "under INTERRUPT")
    with pytest.raises(ValueError, match="refusing to write"):
        write(rec)
    top = F.write(F.DeviceRecord([F.PciInfo(0, 0, 0, 0)]))
    expect(patch(top, 32, "<I", F.DTINDEX), 32, F.DTINDEX, "at the top level")


def test_nesting_too_deep():
    b = F.write(F.DeviceRecord([F.Region(0, 0, 0, 0, 0, [F.UnknownRecord(0x9000, struct.pack("<III", 0x9000, 40, 0)
                                                                          + bytes(28))])]))
    expect(patch(b, 72, "<I", F.REGION), 72, F.REGION, "nesting too deep")


def test_string_without_nul():
    b = write(dt_example())
    kid = 32 + 24 + 40
    expect(patch(b, kid + 12 + 22, "<B", ord("x")), kid, F.DTPATH, "without NUL")
    e = expect(patch(b, kid + 12 + 5, "<B", 0), kid + 12 + 6, F.DTPATH, "after the string's NUL")
    assert "DTPATH" in str(e)


def test_duplicate_indexes_and_singletons():
    for recs, rtype, words in [
        ([F.Region(3), F.Region(3)], F.REGION, "duplicate region index 3"),
        ([F.Interrupt(1), F.Interrupt(1)], F.INTERRUPT, "duplicate interrupt index 1"),
        ([F.PciInfo(0, 0, 0, 0), F.PciInfo(0, 0, 1, 0)], F.PCI_INFO, "a second PCI_INFO"),
        ([F.DeviceInfo(0, 0, 0), F.DeviceInfo(0, 0, 0)], F.DEVICE_INFO, "a second DEVICE_INFO"),
        ([F.Region(0, 0, 0, 8, 0, [F.PciConfigSpace(), F.PciConfigSpace()])], F.PCI_CONFIG_SPACE, "a second"),
    ]:
        b = write(F.DeviceRecord(recs), validate=False)
        with pytest.raises(RecordFormatError, match=words) as ei:
            parse(b)
        assert ei.value.record_type == rtype
        assert ei.value.offset > 32


def test_region_data_checks():
    outside = F.DeviceRecord([F.Region(0, 0, 0, 4, 0, [F.RegionData(2, b"abcd")])])
    with pytest.raises(RecordFormatError, match="outside region 0"):
        parse(write(outside, validate=False))
    overlap = F.DeviceRecord([F.Region(0, 0, 0, 16, 0, [F.RegionData(0, b"abcd"), F.RegionData(2, b"xy")])])
    with pytest.raises(RecordFormatError, match="overlaps"):
        parse(write(overlap, validate=False))
    disagree = F.DeviceRecord([F.Region(0, F.REGION_READ, 0, 16, 0, [F.RegionInfo(0x3)])])
    with pytest.raises(RecordFormatError, match="disagree"):
        parse(write(disagree, validate=False))


def test_file_too_large(tmp_path):
    b = good()
    with pytest.raises(RecordFormatError, match="larger than the limit") as ei:
        parse(b, max_size=len(b) - 1)
    assert ei.value.offset == 0
    p = tmp_path / "big.vfiorec"
    p.write_bytes(b)
    with pytest.raises(RecordFormatError, match="larger than the limit"):
        F.load(p, max_size=64)
    with pytest.raises(RecordFormatError, match="larger than the limit"):
        F.MappedRecord(p, max_size=64)


def test_lying_length_reads_nothing_beyond_the_file():
    """A huge rec_len/file_len is refused from the header values alone."""
    b = patch(good(), REGION0 + 4, "<I", 0xFFFFFFF0)
    expect(b, REGION0, F.REGION, "past the end of the file")
    expect(patch(good(), 24, "<Q", 1 << 62), len(good()), None, "truncated")


def test_unknown_records_kept_in_place():
    unk = F.UnknownRecord(0xABCD, struct.pack("<III", 0xABCD, 17, 5) + b"hello")
    sub = F.UnknownRecord(0x8F00, struct.pack("<III", 0x8F00, 12, 0))
    rec = F.DeviceRecord([F.PciInfo(0, 1, 2, 3), unk, F.Region(2, 0, 0, 0, 0, [sub, F.PciConfigSpace()])],
                         version_minor=7, header_flags=0x10, header_extra=b"futurehd")
    b = write(rec)
    back = parse(b)
    assert back.records[1] == unk and back.records[1].flags == 5
    assert back.regions[2].children[0] == sub
    assert (back.version_minor, back.header_flags, back.header_extra) == (7, 0x10, b"futurehd")
    assert write(back) == b


def test_mapped_record_is_lazy_and_releases(tmp_path):
    p = tmp_path / "x.vfiorec"
    F.save(pci_example(), p)
    with F.MappedRecord(p) as m:
        data = m.record.regions[7].data[0].data
        assert isinstance(data, memoryview)
        assert bytes(data[:2]) == b"\x34\x12"
        assert m.record == pci_example()
    with pytest.raises(ValueError):
        bytes(data)          # released with the mapping


def test_mapped_record_releases_on_error(tmp_path):
    p = tmp_path / "bad.vfiorec"
    p.write_bytes(good()[:-8])
    with pytest.raises(RecordFormatError):
        F.MappedRecord(p)


def test_write_refuses_unrepresentable_fields():
    with pytest.raises(ValueError, match="does not fit"):
        write(F.DeviceRecord([F.Region(1 << 32)]))
    with pytest.raises(ValueError, match="NUL"):
        write(F.DeviceRecord([F.Note("a\0b")]))


# ---------------------------------------------------------------------------
# fuzz: random and mutated files give a clean parse or RecordFormatError
# ---------------------------------------------------------------------------
def _seeds() -> list[bytes]:
    seeds = [good(), write(dt_example())]
    for name in ("edu", "nvme"):
        path = os.path.join(RECORDS, f"{name}.vfiorec")
        if os.path.exists(path):
            seeds.append(open(path, "rb").read())
    return seeds


@settings(max_examples=400, deadline=2000)
@given(st.data())
def test_fuzz_mutations(data):
    seed = data.draw(st.sampled_from(_seeds()))
    b = bytearray(seed)
    op = data.draw(st.sampled_from(["flip", "u32", "cut", "insert"]))
    if op == "flip":
        for _ in range(data.draw(st.integers(1, 8))):
            b[data.draw(st.integers(0, len(b) - 1))] ^= 1 << data.draw(st.integers(0, 7))
    elif op == "u32":
        off = data.draw(st.integers(0, len(b) - 4)) & ~3
        struct.pack_into("<I", b, off, data.draw(st.sampled_from([0, 1, 7, 12, 0xFFFFFFFF, 0x7FFFFFFF, 0x8001, 5])))
    elif op == "cut":
        b = b[:data.draw(st.integers(0, len(b)))]
    else:
        at = data.draw(st.integers(0, len(b)))
        b[at:at] = data.draw(st.binary(min_size=1, max_size=16))
    try:
        rec = parse(bytes(b))
    except RecordFormatError as e:
        assert e.offset >= 0
        return
    assert write(rec) == bytes(b)


@settings(max_examples=300, deadline=2000)
@given(st.binary(max_size=256))
def test_fuzz_random_bytes(b):
    for candidate in (b, b"VFIOREC\x00" + b, good()[:32] + b):
        try:
            parse(candidate)
        except RecordFormatError:
            pass
