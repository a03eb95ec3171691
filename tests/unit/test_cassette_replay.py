"""Cassettes recorded and replayed on the host: sessions with vfio.models.edu (the Python
model stands in for the device; the same recorder runs on real devices in
tests/kernel/test_cassette_sessions.py), every divergence kind, both matching modes,
interrupts and DMA at their recorded points, reproduced IOVAs, markers."""

from __future__ import annotations

import importlib.util
import os

import pytest

from tests.paths import EXAMPLES
from vfio import uapi
from vfio.errors import Error, InvalidValue
from vfio.model import open_model_device
from vfio.models.edu import EduModel
from vfio.pci.passthrough import PassthroughDevice
from vfio.record import cassette as C
from vfio.record import format as F


def _edu_example():
    spec = importlib.util.spec_from_file_location("edu_driver_for_cassettes", os.path.join(EXAMPLES, "edu_driver.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _session(dev) -> None:
    """A small raw session: ID, liveness, a 64-bit register, a marker."""
    bar = dev.region(0)
    assert bar.read32(0x00) == 0x010000ED
    bar.write32(0x04, 0x12345678)
    assert bar.read32(0x04) == 0xEDCBA987
    bar.write64(0x80, 0x1000)
    C.marker(dev, "after DMA_SRC")
    assert bar.read64(0x80) == 0x1000


@pytest.fixture
def small(tmp_path):
    path = tmp_path / "small.vfiorec"
    with C.record_device(open_model_device(EduModel()), path, text="small session") as dev:
        _session(dev)
    return path


def test_recording_writes_the_session_in_order(small):
    rec = F.load(small)
    assert rec.cassette.text == "small session" and rec.version_minor == 1
    entries = [e for r in rec.records if type(r) is F.Accesses for e in r.entries]
    assert entries == [F.Access(0, 4, 0, 0x00, 0x010000ED), F.Access(1, 4, 0, 0x04, 0x12345678),
                       F.Access(0, 4, 0, 0x04, 0xEDCBA987), F.Access(1, 8, 0, 0x80, 0x1000),
                       F.Access(0, 8, 0, 0x80, 0x1000)]
    assert [r for r in rec.records if type(r) is F.Marker] == [F.Marker(4, "after DMA_SRC")]


def test_mapped_accesses_are_recorded_and_replayed(tmp_path):
    """MappedRegion accessors reach the recorder: a recording backend traps MMIO (the view's
    accessors go through pread/pwrite), and so does replay."""
    from tests.paths import RECORDS
    from vfio.record.replay import open_replay
    path = tmp_path / "mapped.vfiorec"
    with C.record_device(open_replay(os.path.join(RECORDS, "edu.vfiorec")), path) as dev:
        assert dev.region(0).info.mmappable and dev.backend.traps_mmio
        m = dev.region(0).map()
        assert m.read32(0) == 0x010000ED
        m.write32(0x04, 0x1)
        m.write(0x40, b"\x01\x02\x03")             # bulk, split as MappedRegion splits it
    entries = [e for r in F.load(path).records if type(r) is F.Accesses for e in r.entries]
    assert entries == [F.Access(0, 4, 0, 0, 0x010000ED), F.Access(1, 4, 0, 4, 1), F.Access(1, 2, 0, 0x40, 0x0201),
                       F.Access(1, 1, 0, 0x42, 0x03)]
    with C.open_cassette(path) as dev:
        m = dev.region(0).map()
        assert m.read32(0) == 0x010000ED
        m.write32(0x04, 0x1)
        m.write(0x40, b"\x01\x02\x03")
        dev.backend.finish()
        m.close()
        with pytest.raises(Exception, match="closed"):
            m.read32(0)


def test_replay_answers_with_the_recorded_values(small):
    with C.open_cassette(small) as dev:
        _session(dev)
        dev.backend.finish()


def _mismatch(small, act, mode=C.Match.STRICT) -> C.CassetteMismatch:
    with C.open_cassette(small, mode=mode) as dev:
        with pytest.raises(C.CassetteMismatch) as ei:
            act(dev, dev.region(0))
    assert isinstance(ei.value, Error)
    return ei.value


def test_a_wrong_write_value_is_named_with_its_access_and_history(small):
    def act(dev, bar):
        bar.read32(0)
        bar.write32(0x04, 0x1)
    e = _mismatch(small, act)
    assert e.number == 1
    assert e.expected == "write32 BAR0+0x4 (LIVENESS) = 0x12345678"
    assert e.actual == "write32 BAR0+0x4 (LIVENESS) = 0x00000001"
    assert e.recent == ["#0 read32 BAR0+0x0 (ID) = 0x010000ed"]
    assert "small.vfiorec: access #1 diverges" in str(e) and "#0 read32 BAR0+0x0 (ID)" in str(e)


def test_a_wrong_width_is_caught(small):
    def act(dev, bar):
        bar.read32(0)
        bar.write32(0x04, 0x12345678)
        bar.read32(0x04)
        bar.write32(0x80, 0x1000)
    e = _mismatch(small, act)
    assert e.number == 3 and e.expected.startswith("write64 BAR0+0x80 (DMA_SRC)")
    assert e.actual.startswith("write32 BAR0+0x80 (DMA_SRC)")
    assert len(e.recent) == 3


def test_an_extra_access_is_caught(small):
    def act(dev, bar):
        _session(dev)
        bar.read32(0x08)
    e = _mismatch(small, act)
    assert e.number == 5 and e.expected == "the end of the session"
    assert e.actual == "read32 BAR0+0x8 (FACTORIAL)"


def test_a_missing_access_is_caught_by_finish(small):
    with C.open_cassette(small) as dev:
        bar = dev.region(0)
        bar.read32(0)
        bar.write32(0x04, 0x12345678)
        with pytest.raises(C.CassetteMismatch) as ei:
            dev.backend.finish()
    assert ei.value.number == 2 and ei.value.expected == "read32 BAR0+0x4 (LIVENESS) = 0xedcba987"
    assert "missing access" in ei.value.actual


def test_a_marker_out_of_place_is_caught(small):
    def act(dev, bar):
        bar.read32(0)
        C.marker(dev, "after DMA_SRC")
    e = _mismatch(small, act)
    assert e.number == 1 and e.actual == "marker 'after DMA_SRC'"


def test_per_register_matching_takes_any_interleaving(small):
    with C.open_cassette(small, mode=C.Match.PER_REGISTER) as dev:
        bar = dev.region(0)
        bar.write64(0x80, 0x1000)              # recorded fourth, played first
        bar.write32(0x04, 0x12345678)
        assert bar.read32(0x04) == 0xEDCBA987
        assert bar.read32(0x00) == 0x010000ED
        C.marker(dev, "after DMA_SRC")
        assert bar.read64(0x80) == 0x1000
        dev.backend.finish()


def test_per_register_matching_still_compares_values_and_counts(small):
    def wrong_value(dev, bar):
        bar.write32(0x04, 0x2)
    e = _mismatch(small, wrong_value, C.Match.PER_REGISTER)
    assert e.expected == "write32 BAR0+0x4 (LIVENESS) = 0x12345678"

    def twice(dev, bar):
        bar.read32(0x00)
        bar.read32(0x00)
    e = _mismatch(small, twice, C.Match.PER_REGISTER)
    assert "no more reads of BAR0+0x0 (ID)" in e.expected


def test_interrupts_and_dma_come_back_at_their_points(tmp_path):
    """The edu example's driver code: factorial by interrupt, DMA round trip by polling and interrupt."""
    ex = _edu_example()
    path = tmp_path / "edu.vfiorec"
    pattern = bytes((i * 7 + 3) & 0xFF for i in range(512))

    def drive(pt):
        edu = ex.Edu(pt, 5)
        return edu.liveness(0x12345678), edu.factorial(6), edu.dma_round_trip(pattern)

    dev = C.record_device(open_model_device(EduModel()), path)
    with PassthroughDevice(dev, owns_device=True) as pt:
        recorded = drive(pt)
    rec = F.load(path)
    assert sum(type(r) is F.IrqEvent for r in rec.records) == 2
    writes = [r for r in rec.records if type(r) is F.DmaWrite]
    assert any(r.iova == ex.RAM_GPA + 0x1000 and bytes(r.data) == pattern for r in writes)
    d = C.open_cassette(path)
    backend = d.backend
    with PassthroughDevice(d, owns_device=True) as pt:
        assert drive(pt) == recorded == (0xEDCBA987, 720, pattern)
    backend.finish()


def test_the_allocator_gets_the_recorded_iova(tmp_path):
    path = tmp_path / "iova.vfiorec"
    with C.record_device(open_model_device(EduModel()), path) as dev:
        dev.dma.alloc(0x1000).unmap()
    rec = F.load(path)
    maps = [r for r in rec.records if type(r) is F.DmaMap]
    assert len(maps) == 1
    # the same session with the mapping recorded at another IOVA: replay hands that one out
    moved = F.DeviceRecord([F.DmaMap(r.at, 0x7770000, r.size, r.flags) if type(r) is F.DmaMap else
                            F.DmaUnmap(r.at, 0x7770000, r.size) if type(r) is F.DmaUnmap else r
                            for r in rec.records], version_minor=1)
    F.save(moved, path)
    with C.open_cassette(path) as dev:
        m = dev.dma.alloc(0x1000)
        assert m.iova == 0x7770000
        m.unmap()
        dev.backend.finish()


def test_a_dma_mapping_the_recording_lacks_is_a_divergence(tmp_path, small):
    with C.open_cassette(small) as dev:
        with pytest.raises(C.CassetteMismatch, match="DMA map of 0x1000 bytes"):
            dev.dma.alloc(0x1000)


def test_set_irqs_is_compared(tmp_path):
    path = tmp_path / "irq.vfiorec"
    with C.record_device(open_model_device(EduModel()), path) as dev:
        dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX, 1)
    with C.open_cassette(path) as dev:
        with pytest.raises(C.CassetteMismatch, match="SET_IRQS index 1 start 0 count 1 flags 0x24"):
            dev.enable_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 1)


def test_recording_is_asked_for_by_the_context_or_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(C.RECORD_ENV, raising=False)
    assert C.recording_path() is None
    monkeypatch.setenv(C.RECORD_ENV, str(tmp_path / "env.vfiorec"))
    assert C.recording_path() == str(tmp_path / "env.vfiorec")
    path = tmp_path / "ctx.vfiorec"
    with C.recording(path):
        assert C.recording_path() == str(path)
        with C.record_if_requested(open_model_device(EduModel())) as dev:
            assert isinstance(dev.backend, C.RecordingBackend)
            dev.region(0).read32(0)
        with pytest.raises(InvalidValue, match="one device"):
            C.record_if_requested(open_model_device(EduModel()))
    assert F.load(path).cassette is not None


def test_resets_are_recorded_and_compared(tmp_path):
    path = tmp_path / "reset.vfiorec"
    with C.record_device(open_model_device(EduModel()), path) as dev:
        dev.region(0).write32(0x04, 0x1)
        dev.reset()
    assert F.ResetEvent(F.RESET_DEVICE, 1) in F.load(path).records
    with C.open_cassette(path) as dev:
        dev.region(0).write32(0x04, 0x1)
        with pytest.raises(C.CassetteMismatch) as ei:
            dev.hot_reset([])
        assert ei.value.expected == "device reset" and ei.value.actual == "hot reset"
        dev.reset()
        dev.backend.finish()
