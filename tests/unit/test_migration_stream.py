"""vfio.migration's save/load and its stream format on the host, against a fake
migration driver that behaves as the kernel's uAPI says (include/uapi/linux/vfio.h):
one arc per SET (anything else is EINVAL, as a driver's step function would
WARN and refuse), a data fd on the session-opening arcs (a pipe here), RESUMING
-> STOP refusing a short stream (EINVAL, as mtty does), VFIO_DEVICE_RESET back
to RUNNING.  The real driver (mtty) is exercised in tests/kernel/test_migration_mtty.py.
"""

from __future__ import annotations

import errno
import io
import os
import struct
import zlib
from types import SimpleNamespace

import pytest

import vfio
from vfio import uapi
from vfio.errors import VfioError
from vfio.migration import (MAX_RECORD, STREAM_MAGIC, MigFlag, Migration, MigrationFailed, MigrationStreamError,
                            MigState, RecordKind, StreamCorrupt, StreamMismatch, StreamTruncated,
                            UnsupportedTransition)

from tests.unit.test_migration_fsm import OPENS_DATA_FD, oracle_arcs

FLAGS = MigFlag.STOP_COPY | MigFlag.P2P


class FakeDriver:
    """A device with a migration driver whose state is ``blob`` (bytes)."""

    def __init__(self, name: str, blob: bytes, regions=((0, 8, 3), (1, 8, 3)), fail_read: bool = False):
        self.name = name
        self.blob = blob
        self.state = MigState.RUNNING
        self.loaded = None
        self.info = SimpleNamespace(flags=uapi.VFIO_DEVICE_FLAGS_PCI, num_irqs=2, is_pci=False, can_reset=False)
        self.regions = [SimpleNamespace(index=i, size=s, info=SimpleNamespace(flags=f)) for i, s, f in regions]
        self._resume_r = None
        self.fail_read = fail_read
        self.sets = []
        self.resets = 0

    # the parts of vfio.device.Device that vfio.migration uses
    def migration_flags(self) -> int:
        return FLAGS.value

    def migration_state(self) -> int:
        return int(self.state)

    def irq_info(self, i):
        return SimpleNamespace(count=1, flags=uapi.VFIO_IRQ_INFO_EVENTFD)

    def feature(self, feature, flags, data=b""):
        assert feature == uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE
        return struct.pack("<Q", len(self.blob))

    def reset(self):
        self.resets += 1
        self._close_resume()
        self.state = MigState.RUNNING

    def _close_resume(self):
        if self._resume_r is not None:
            os.close(self._resume_r)
            self._resume_r = None

    def set_migration_state(self, new: int) -> int:
        new = MigState(new)
        arc = (self.state, new)
        self.sets.append(arc)
        if arc not in oracle_arcs(FLAGS):
            raise VfioError(errno.EINVAL, f"fake {self.name}: {arc} is not an arc")
        fd = -1
        if arc == (MigState.STOP, MigState.STOP_COPY):
            r, w = os.pipe()
            if self.fail_read:
                os.close(w)
                os.close(r)
                r = os.open("/proc/self/mem", os.O_RDONLY)     # reading at offset 0 fails: EIO
            else:
                os.write(w, self.blob)
                os.close(w)
            fd = r
        elif arc == (MigState.STOP, MigState.RESUMING):
            r, w = os.pipe()
            os.set_blocking(r, False)
            self._resume_r = r
            fd = w
        elif arc == (MigState.RESUMING, MigState.STOP):
            got = b""
            while True:
                try:
                    chunk = os.read(self._resume_r, 65536)
                except BlockingIOError:
                    break
                if not chunk:
                    break
                got += chunk
            if len(got) != len(self.blob):
                raise VfioError(errno.EINVAL, f"fake {self.name}: load of {len(got)} bytes, needs {len(self.blob)}")
            self.loaded = got
            self._close_resume()
        self.state = new
        assert (fd >= 0) == (arc in OPENS_DATA_FD)
        return fd


def _pair(blob=b"device state " * 100, **kw):
    src = FakeDriver("src", blob)
    dst = FakeDriver("dst", bytes(len(blob)), **kw)
    return src, Migration(src), dst, Migration(dst)


def _saved(**kw):
    src, ms, dst, md = _pair(**kw)
    s = io.BytesIO()
    rep = ms.save(s)
    return s.getvalue(), rep, src, dst, md


def test_round_trip_and_the_arcs_taken():
    src, ms, dst, md = _pair()
    s = io.BytesIO()
    rep = ms.save(s, chunk=256)
    assert rep.precopy_rounds == [] and rep.stop_copy_bytes == len(src.blob) == rep.data_size_estimate
    assert [str(a) for a in rep.arcs] == ["RUNNING->RUNNING_P2P", "RUNNING_P2P->STOP", "STOP->STOP_COPY",
                                          "STOP_COPY->STOP"]
    assert ms.arcs == rep.arcs and src.state is MigState.STOP and ms.data is None
    data = s.getvalue()
    assert data.startswith(STREAM_MAGIC) and rep.stream_bytes == len(data)
    s.seek(0)
    lrep = md.load(s)
    assert dst.loaded == src.blob and lrep.device_bytes == len(src.blob) and lrep.records == 6   # 1300 / 256
    assert dst.state is MigState.RUNNING and md.data is None


def test_every_truncation_is_named_with_its_offset():
    data, _, _, dst, md = _saved()
    for cut in range(len(data)):
        with pytest.raises(StreamTruncated) as ei:
            md.load(io.BytesIO(data[:cut]))
        e = ei.value
        assert e.offset == cut, (cut, str(e))
        assert f"offset {cut}" in str(e) and e.state is MigState.RUNNING and "target left in RUNNING" in str(e)
        assert dst.state is MigState.RUNNING and dst.loaded is None and md.data is None
    assert dst.resets > 0            # cuts past the first record: RESUMING was entered, then reset


def test_every_corrupted_byte_is_refused():
    data, _, _, dst, md = _saved()
    for at in range(len(data)):
        bad = bytearray(data)
        bad[at] ^= 0xFF
        with pytest.raises(MigrationStreamError) as ei:
            md.load(io.BytesIO(bytes(bad)))
        assert isinstance(ei.value, (StreamCorrupt, StreamTruncated, StreamMismatch)), at
        assert ei.value.state is MigState.RUNNING and dst.loaded is None, at


def test_header_errors_name_the_field():
    data, _, _, _, md = _saved()
    with pytest.raises(StreamCorrupt, match="offset 0: not a VFIO migration stream"):
        md.load(io.BytesIO(b"ELF\x00" + data[4:]))
    bad = bytearray(data)
    bad[8:10] = struct.pack("<H", 2)
    with pytest.raises(StreamCorrupt, match="offset 8: stream version 2"):
        md.load(io.BytesIO(bytes(bad)))


def test_record_length_over_the_limit_is_refused_before_reading_it():
    data, _, _, dst, md = _saved()
    ident_len = struct.unpack_from("<I", data, 12)[0]
    first = 20 + ident_len
    bad = bytearray(data[:first + 16])
    bad[first + 8:first + 12] = struct.pack("<I", MAX_RECORD + 1)
    with pytest.raises(StreamCorrupt) as ei:
        md.load(io.BytesIO(bytes(bad)))
    assert ei.value.offset == first + 8 and "over" in str(ei.value) and dst.sets == []


def test_end_totals_must_match():
    data, _, _, _, md = _saved()
    end = struct.pack("<QQ", 5, 1)
    forged = data[:-32] + struct.pack("<IIII", RecordKind.END, 0, 16, zlib.crc32(end)) + end
    with pytest.raises(StreamCorrupt, match="END says 5 bytes in 1 records"):
        md.load(io.BytesIO(forged))


def test_another_device_kind_is_refused_before_the_target_is_touched():
    data, _, _, _, _ = _saved()
    other = FakeDriver("other", bytes(1300), regions=((0, 8, 3),))
    mo = Migration(other)
    with pytest.raises(StreamMismatch) as ei:
        mo.load(io.BytesIO(data))
    e = ei.value
    assert e.field == "regions" and e.offset == 20 and e.state is MigState.RUNNING
    assert other.sets == [] and isinstance(e, ValueError) and isinstance(e, vfio.Error)


def test_the_drivers_refusal_keeps_errno_and_names_the_state():
    data, _, _, _, _ = _saved()
    short = FakeDriver("short", bytes(10))          # its driver wants 10 bytes: RESUMING -> STOP fails
    m = Migration(short)
    with pytest.raises(MigrationFailed) as ei:
        m.load(io.BytesIO(data))
    e = ei.value
    assert e.errno == errno.EINVAL and isinstance(e, OSError) and e.state is MigState.RUNNING
    assert "RESUMING->STOP" in str(e) and "device left in RUNNING" in str(e) and short.resets == 1


def test_a_failed_save_lets_the_source_run_on():
    src = FakeDriver("src", b"x" * 100, fail_read=True)
    m = Migration(src)
    with pytest.raises(MigrationFailed) as ei:
        m.save(io.BytesIO())
    assert ei.value.errno == errno.EIO and ei.value.state is MigState.RUNNING
    assert src.state is MigState.RUNNING and m.data is None


def test_unsupported_target_names_the_device_and_makes_no_call():
    src = FakeDriver("dev0", b"")
    m = Migration(src)
    with pytest.raises(UnsupportedTransition, match="dev0: migration state RUNNING -> PRE_COPY .* does not support"):
        m.set_state(MigState.PRE_COPY)
    assert src.sets == []


def test_attachments_are_checked_before_the_target_is_touched():
    src, ms, dst, md = _pair()
    s = io.BytesIO()
    ms.save(s, attachments={"model": {"bar0": 0xC000}})
    seen = []
    s.seek(0)
    rep = md.load(s, verify=seen.append)
    assert seen == [{"model": {"bar0": 0xC000}}] and rep.attachments == seen[0] and dst.loaded == src.blob

    def refuse(att):
        raise ValueError("not this model")
    dst2 = FakeDriver("dst2", bytes(len(src.blob)))
    s.seek(0)
    with pytest.raises(ValueError, match="not this model"):
        Migration(dst2).load(s, verify=refuse)
    assert dst2.sets == []
