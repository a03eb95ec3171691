"""The emulated MSI-X table/PBA and the masked-vector routing of vfio.pci.msix, without a device."""

from __future__ import annotations

import struct

import pytest

from vfio.errors import RegionAccessError
from vfio.pci.msix import MSIX_ENTRY_MASKED, MsixTable, Vector


def test_table_comes_out_of_reset_masked_and_zero():
    t = MsixTable(3)
    assert [t.masked(v) for v in range(3)] == [True] * 3
    assert all(t.message(v).address == 0 and t.message(v).data == 0 for v in range(3))
    assert (t.table_bytes, t.pba_bytes) == (48, 8)
    assert MsixTable(65).pba_bytes == 16


def test_table_writes_report_the_vectors_they_change():
    t = MsixTable(4)
    assert t.write_table(16, 8, 0x1_FEE0_1000) == [1]           # QWORD address of vector 1
    assert t.message(1).address == 0x1_FEE0_1000
    assert t.write_table(16, 8, 0x1_FEE0_1000) == []            # same bytes: nothing changed
    assert t.write_table(8, 8, 0) == [0]                         # vector 0 data + control: unmasked
    assert not t.masked(0)
    t.write_table(3 * 16 + 12, 4, MSIX_ENTRY_MASKED)
    assert t.masked(3) and t.read_table(3 * 16 + 12, 4) == 1


@pytest.mark.parametrize("offset,size", [(2, 4), (4, 8), (0, 2), (0, 1), (64, 4), (-4, 4)])
def test_only_aligned_dword_and_qword_accesses_inside_the_table(offset, size):
    t = MsixTable(4)
    with pytest.raises(RegionAccessError, match="MSI-X table"):
        t.read_table(offset, size)
    with pytest.raises(RegionAccessError):
        t.write_table(offset, size, 0)


def test_pba_bits_come_from_the_pending_callback():
    pending = {1, 64}
    t = MsixTable(65, pending=lambda v: v in pending)
    assert t.read_pba(0, 8) == 0b10
    assert t.read_pba(8, 4) == 1                                 # vector 64
    assert t.read_pba(0, 4) == 0b10 and t.read_pba(4, 4) == 0
    with pytest.raises(RegionAccessError, match="PBA"):
        t.read_pba(16, 4)


def test_state_round_trip_and_size_check():
    t = MsixTable(2)
    t.write_table(8, 4, 0x55)
    s = t.get_state()
    u = MsixTable(2)
    u.set_state(s)
    assert u.message(0).data == 0x55 and bytes(u.table) == bytes(t.table)
    with pytest.raises(ValueError, match="32 bytes, this one 48"):
        MsixTable(3).set_state(s)


def test_table_size_limits():
    with pytest.raises(ValueError):
        MsixTable(0)
    with pytest.raises(ValueError):
        MsixTable(2049)


def test_vector_routes_masked_signals_to_pending_and_delivers_at_unmask():
    v = Vector(2, 0, "test")
    try:
        assert v.masked and v.kernel_fd() == v._pending_efd.fd
        # the kernel signals the masked route
        v._pending_efd.signal()
        assert v.pending and v.eventfd.read() == 0
        v.masked = False
        assert v.kernel_fd() == v.eventfd.fd
        assert v.deliver_pending() and v.eventfd.read() == 1
        assert not v.pending and not v.deliver_pending()
        v._pending_efd.signal()
        v.clear_pending()
        assert not v.pending
    finally:
        v.close()
    assert v.eventfd.closed and v._pending_efd.closed


def test_entries_are_little_endian_16_bytes():
    t = MsixTable(2)
    t.write_table(16, 4, 0xFEE00000)
    t.write_table(20, 4, 0)
    t.write_table(24, 4, 0x4021)
    t.write_table(28, 4, 0)
    assert struct.unpack_from("<IIII", t.table, 16) == (0xFEE00000, 0, 0x4021, 0)
    assert str(t.message(1)) == "0xfee00000<-0x4021"
