"""Record files that parse but no kernel could have produced: replay refuses them
up front (naming the file and the record's offset), in bounded time and memory;
and only regular files are read, whoever reads them."""

from __future__ import annotations

import contextlib
import errno
import os
import resource
import signal
import struct

import pytest

from vfio import uapi
from vfio.record import format as F
from vfio.record import replay as R
from vfio.record.replay import ReplayBackend, open_replay

from tests.paths import REPO as ROOT
EDU = os.path.join(ROOT, "records", "edu.vfiorec")
RW, RWM = 3, 7


@contextlib.contextmanager
def deadline(seconds: float):
    """Fail (instead of hanging the suite) when the body blocks longer than ``seconds``."""
    def expired(signum, frame):
        raise TimeoutError(f"still blocked after {seconds} s")
    old = signal.signal(signal.SIGALRM, expired)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def pci_record(*extra, num_regions=9, num_irqs=5, cfg_size=256, drop=()) -> F.DeviceRecord:
    cfg = bytearray(cfg_size)
    struct.pack_into("<HH", cfg, 0, 0x1234, 0x11E8)
    recs = [F.PciInfo(0, 0, 3, 0), F.DeviceInfo(uapi.VFIO_DEVICE_FLAGS_PCI, num_regions, num_irqs),
            F.Region(0, RWM, 0, 1 << 20, 0, [F.RegionInfo(RWM)]),
            F.Region(7, RW, 7 << 40, cfg_size, 0, [F.PciConfigSpace(), F.RegionInfo(RW),
                                                   F.RegionData(0, bytes(cfg[:256]))]),
            F.Interrupt(0, 0x7, 1)]
    return F.DeviceRecord([r for r in recs if getattr(r, "index", None) not in drop] + list(extra))


def save(tmp_path, rec, name="dev.vfiorec") -> str:
    p = str(tmp_path / name)
    with open(p, "wb") as f:
        f.write(F.write(rec, validate=True))       # a file the format accepts
    return p


def refused(path, *words):
    """open_replay(path) is refused with RecordFormatError naming the path, an offset and the words."""
    with deadline(10):
        with pytest.raises(F.RecordFormatError) as ei:
            open_replay(path)
    msg = str(ei.value)
    assert path in msg and ei.value.offset is not None and "offset 0x" in msg, msg
    for w in words:
        assert w in msg, msg
    assert F.load(path) is not None          # the format itself accepts it: replay's limits refuse it
    return ei.value


@pytest.mark.parametrize("size", [(1 << 64) - 1, (1 << 40) + 1])
def test_region_larger_than_vfio_pci_window_is_refused(tmp_path, size):
    e = refused(save(tmp_path, pci_record(F.Region(2, RWM, 2 << 40, size, 0, [F.RegionInfo(RWM)]))),
                "region 2", "larger than a vfio-pci region's window")
    assert e.record_type == F.REGION


def test_region_past_the_offset_space_is_refused(tmp_path):
    rec = F.DeviceRecord([F.Region(0, RW, (1 << 64) - 0x1000, 0x2000, 0, [F.RegionInfo(RW)])])
    refused(save(tmp_path, rec), "runs past the 64-bit offset space")


def test_config_region_of_1_gib_is_refused(tmp_path):
    rec = pci_record(drop=(7,))
    rec.records.append(F.Region(7, RW, 7 << 40, 1 << 30, 0, [F.PciConfigSpace(), F.RegionInfo(RW),
                                                             F.RegionData(0, b"\x34\x12\xe8\x11")]))
    refused(save(tmp_path, rec), "region 7 is 0x40000000 bytes", "PCI Express config space (0x1000)")


def test_irq_count_of_2_to_the_32_minus_1_is_refused(tmp_path):
    e = refused(save(tmp_path, pci_record(F.Interrupt(2, 0x9, 0xFFFFFFFF))),
                "interrupt 2 has 4294967295 vectors, more than 2048")
    assert e.record_type == F.INTERRUPT


@pytest.mark.parametrize("field", ["num_regions", "num_irqs"])
def test_huge_index_counts_are_refused(tmp_path, field):
    kw = {field: 0xFFFFFFFF}
    e = refused(save(tmp_path, pci_record(**kw)), f"{field} 4294967295 is more than {R.MAX_INDEXES}")
    assert e.record_type == F.DEVICE_INFO


def test_record_for_an_index_the_device_does_not_have_is_refused(tmp_path):
    # DEVICE_INFO says 9 regions: the kernel refuses GET_REGION_INFO 12, so no capture has it
    refused(save(tmp_path, pci_record(F.Region(12, RW, 12 << 40, 16, 0, [F.RegionInfo(RW)]))),
            "region index 12 is not below DEVICE_INFO's num_regions 9")
    refused(save(tmp_path, pci_record(F.Interrupt(7, 0x9, 1)), "b.vfiorec"),
            "interrupt index 7 is not below DEVICE_INFO's num_irqs 5")


def test_index_without_device_info_is_bounded(tmp_path):
    # no DEVICE_INFO: counts are derived from the indexes, which must stay small
    rec = F.DeviceRecord([F.Region(0xFFFFFFFF, RW, 0, 16, 0, [F.RegionInfo(RW)])])
    refused(save(tmp_path, rec), "region index 4294967295 is 1024 or more")


def test_two_regions_over_the_same_span_are_refused(tmp_path):
    rec = pci_record(F.Region(2, RWM, 0, 1 << 20, 0, [F.RegionInfo(RWM)]))   # BAR2 on top of BAR0
    refused(save(tmp_path, rec), "region 2 at offset 0x0 overlaps region 0")


def test_refusal_names_the_record_in_memory_too():
    rec = pci_record(F.Interrupt(2, 0x9, 1 << 20))
    with pytest.raises(F.RecordFormatError, match="interrupt 2 has 1048576 vectors") as ei:
        ReplayBackend(rec)
    assert ei.value.offset is None            # built in memory: no file offset to name


def test_kernel_sized_records_still_replay(tmp_path):
    """The bounds are the kernel's: 4 KiB config space, 2048 MSI-X vectors, a
    512 GiB 64-bit BAR, 1024 indexes -- all served, the BAR lazily (sparse)."""
    big = 1 << 39
    rec = pci_record(F.Region(2, RWM, 2 << 40, big, 0, [F.RegionInfo(RWM)]), F.Interrupt(2, 0x9, 2048),
                     cfg_size=4096, num_regions=R.MAX_INDEXES)
    path = save(tmp_path, rec)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with deadline(10), open_replay(path) as dev:
        assert dev.info.num_regions == R.MAX_INDEXES
        assert dev.region(2).read(big - 4, 4) == bytes(4)
        dev.region(2).write32(big - 4, 0x12345678)
        assert dev.region(2).read32(big - 4) == 0x12345678
        assert dev.irq_info(2).count == 2048
        assert dev.region(7).size == 4096 and dev.region(7).read(4092, 4) == bytes(4)
        with pytest.raises(OSError) as ei:            # index 8 < num_regions without a record: EINVAL
            dev.region_info(8)
        assert ei.value.errno == errno.EINVAL
    grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
    assert grown_kib < 32 * 1024, f"replaying a 512 GiB BAR grew the peak RSS by {grown_kib} KiB"


# ---------------------------------------------------------------------------------------
# only regular files, size-limited, for every reader
# ---------------------------------------------------------------------------------------

READERS = {
    "load": F.load,
    "MappedRecord": lambda p: F.MappedRecord(p).close(),
    "open_replay": lambda p: open_replay(p).close(),
    "record_report": lambda p: __import__("vfio.host.inspect", fromlist=["x"]).record_report(p),
}


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_fifo_is_refused_without_blocking(tmp_path, reader):
    fifo = str(tmp_path / "dev.vfiorec")
    os.mkfifo(fifo)
    with deadline(5):
        with pytest.raises(F.RecordFormatError) as ei:
            READERS[reader](fifo)
    assert str(ei.value) == f"{fifo}: is a FIFO, not a regular file: a record file must be one (nothing was read)"
    assert ei.value.offset is None


@pytest.mark.parametrize("reader", sorted(READERS))
def test_directories_and_devices_are_refused(tmp_path, reader):
    for path, kind in ((str(tmp_path), "a directory"), ("/dev/null", "a character device")):
        with deadline(5), pytest.raises(F.RecordFormatError, match=f"is {kind}, not a regular file"):
            READERS[reader](path)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_a_missing_file_is_an_oserror_naming_it(tmp_path, reader):
    p = str(tmp_path / "nope.vfiorec")
    with pytest.raises(FileNotFoundError) as ei:
        READERS[reader](p)
    assert ei.value.filename == p


def test_size_limit_is_checked_before_reading(tmp_path):
    p = tmp_path / "huge.vfiorec"
    with open(p, "wb") as f:
        f.truncate(F.DEFAULT_MAX_FILE_SIZE + 1)          # sparse: nothing to read in fact
    with deadline(5):
        for reader in READERS.values():
            with pytest.raises(F.RecordFormatError, match="larger than the limit of 268435456"):
                reader(str(p))
    f, size = F.open_record_file(EDU)
    with f:
        assert size == os.path.getsize(EDU) and f.read(8) == F.MAGIC


def test_record_count_is_bounded():
    b = F.write(F.DeviceRecord([F.Note(f"n{i}") for i in range(10)]))
    assert len(F.parse(b).records) == 10
    with pytest.raises(F.RecordFormatError, match="more than 9 records"):
        F.parse(b, max_records=9)
