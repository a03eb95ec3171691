"""Device migration (VFIO migration v2) on the kernel's own sample driver mtty
(samples/vfio-mdev/mtty.c, built into the container and iommufd-container kernels).

mtty is an mdev parent whose devices are vfio-pci-API serial cards: BAR0 (and
BAR1 for the dual-port type mtty-2) is a 16550-style UART of eight 1-byte
registers (RX/TX, IER, IIR/FCR, LCR, MCR, LSR, MSR, SCR) with a 16-byte loopback
FIFO: a byte written to TX is read back from RX.  It implements migration v2
with STOP_COPY, P2P and PRE_COPY: the pre-copy data is a 24-byte header (magic,
version, number of ports), STOP_COPY appends each port's ``struct serial_port``
(registers, FIFO, divisor, ...: 36 bytes), and the RESUMING side refuses a
header of another port count (EFAULT on write) and a short stream (EINVAL on
RESUMING -> STOP).  Every test runs on the container path and the cdev path.
"""

from __future__ import annotations

import contextlib
import errno
import io
import itertools
import os

import pytest

import vfio
from vfio.device import Device
from vfio.errors import VfioError
from vfio.host.mdev import create_mdev, remove_mdev
from vfio.migration import (Arc, MigFlag, MigState, MigrationFailed, StreamCorrupt, StreamMismatch,
                            StreamTruncated, UnsupportedTransition)

from tests.unit.test_migration_fsm import ALL, BLOCKED, OPENS_DATA_FD, oracle_path, oracle_states

pytestmark = [pytest.mark.kernel, pytest.mark.mdev]

MDEV_DEVICES = "/sys/bus/mdev/devices"
# 16550 register offsets in a port's BAR
RX_TX, IER, LCR, LSR, SCR = 0, 1, 3, 5, 7
LSR_DR = 0x01
HEADER_BYTES = 24           # offsetof(struct mtty_data, ports)
PORT_BYTES = 36             # sizeof(struct serial_port) on x86-64

PATHS = [pytest.param("container", id="container"),
         pytest.param("cdev", id="cdev", marks=pytest.mark.cdev)]


# ---- mdevs and opening them (the toolkit's host tools and opener) ----------------------
@contextlib.contextmanager
def mdevs(*type_ids):
    """Create mtty mdevs of these types; remove them (and check they are gone) after."""
    made = []
    try:
        for t in type_ids:
            made.append(create_mdev("mtty", t))
        yield made
    finally:
        for uid in made:
            remove_mdev(uid)
    for uid in made:
        assert not os.path.exists(f"{MDEV_DEVICES}/{uid}"), f"mdev {uid} still present after remove"


def open_mdev(uid: str, interface: str) -> Device:
    """An mdev opened by UUID through its group + a type1 container, or its cdev + iommufd."""
    dev = vfio.open_mdev_device(uid, interface=interface)
    assert dev.interface == interface
    return dev


def _fds() -> set:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_fd_leak():
    before = _fds()
    yield
    after = _fds()
    # listdir's own fd comes and goes; anything else left open is a leak
    assert len(after - before) <= 1 and len(after) <= len(before), \
        f"fds left open: {sorted(after - before)} ({[_link(f) for f in sorted(after - before)]})"


def _link(fd: str) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return "?"


# ---- the UART ----------------------------------------------------------------------
def uart_fill(dev: Device, port: int, lcr: int, scr: int, data: bytes) -> None:
    bar = dev.region(port)
    bar.write8(LCR, lcr)
    bar.write8(SCR, scr)
    for b in data:
        bar.write8(RX_TX, b)


def uart_state(dev: Device, port: int) -> dict:
    """LCR, SCR, LSR, then the FIFO drained through RX (destructive)."""
    bar = dev.region(port)
    st = {"lcr": bar.read8(LCR), "scr": bar.read8(SCR), "lsr_dr": bool(bar.read8(LSR) & LSR_DR)}
    fifo = bytearray()
    for _ in range(32):
        if not bar.read8(LSR) & LSR_DR:
            break
        fifo.append(bar.read8(RX_TX))
    st["fifo"] = bytes(fifo)
    return st


# ---- tests ---------------------------------------------------------------------------
@pytest.mark.parametrize("interface", PATHS)
def test_mtty_migration_features(interface, no_fd_leak):
    with mdevs("mtty-1", "mtty-2") as (one, two):
        with open_mdev(one, interface) as d1, open_mdev(two, interface) as d2:
            for dev, ports in ((d1, 1), (d2, 2)):
                mig = dev.migration
                assert dev.migration is mig
                assert mig.supported
                assert mig.flags == MigFlag.STOP_COPY | MigFlag.P2P | MigFlag.PRE_COPY
                assert mig.state is MigState.RUNNING
                assert mig.data_size() == HEADER_BYTES + ports * PORT_BYTES
                ident = mig.identity()
                assert ident["mdev_type"] == f"mtty-{ports}"
                assert ident["pci_ids"].startswith("4348:3253")     # mtty's vendor:device
            assert d1.migration.identity() != d2.migration.identity()
            # a session left open is the device's to close (the fd-leak check sees it closed)
            mig = d2.migration
            arcs = mig.set_state(MigState.PRE_COPY)
            assert [str(x) for x in arcs] == ["RUNNING->PRE_COPY"] and arcs[0].data_fd
            assert mig.precopy_info().initial_bytes == HEADER_BYTES and mig.precopy_info().dirty_bytes == 0
            assert mig.data.fileno() >= 0 and mig.arcs[-1] == arcs[0]


@pytest.mark.parametrize("interface", PATHS)
def test_migrate_uart_state_precopy_then_stop_copy(interface, no_fd_leak):
    with mdevs("mtty-2", "mtty-2") as (a, b):
        with open_mdev(a, interface) as src, open_mdev(b, interface) as dst:
            uart_fill(src, 0, 0x03, 0xA5, b"vfio")
            uart_fill(src, 1, 0x1B, 0x3C, b"!")
            uart_fill(dst, 0, 0x00, 0x11, b"")
            stream = io.BytesIO()
            rep = src.migration.save(stream)
            # one pre-copy round with mtty's header, a second that finds nothing pending
            assert [r.initial_bytes for r in rep.precopy_rounds] == [HEADER_BYTES, 0]
            assert rep.precopy_bytes == HEADER_BYTES
            assert rep.stop_copy_bytes == 2 * PORT_BYTES == rep.data_size_estimate - HEADER_BYTES
            assert [str(x) for x in rep.arcs] == ["RUNNING->PRE_COPY", "PRE_COPY->PRE_COPY_P2P",
                                                  "PRE_COPY_P2P->STOP_COPY", "STOP_COPY->STOP"]
            assert [x.data_fd for x in rep.arcs] == [True, False, False, False]
            assert src.migration.state is MigState.STOP and src.migration.data is None
            assert rep.stream_bytes == len(stream.getvalue())

            stream.seek(0)
            lrep = dst.migration.load(stream)
            assert lrep.device_bytes == rep.device_bytes
            assert [str(x) for x in lrep.arcs] == ["RUNNING->RUNNING_P2P", "RUNNING_P2P->STOP", "STOP->RESUMING",
                                                   "RESUMING->STOP", "STOP->RUNNING_P2P", "RUNNING_P2P->RUNNING"]
            assert dst.migration.state is MigState.RUNNING and dst.migration.data is None
            assert uart_state(dst, 0) == {"lcr": 0x03, "scr": 0xA5, "lsr_dr": True, "fifo": b"vfio"}
            assert uart_state(dst, 1) == {"lcr": 0x1B, "scr": 0x3C, "lsr_dr": True, "fifo": b"!"}


@pytest.mark.parametrize("interface", PATHS)
def test_save_to_a_file_without_precopy(interface, tmp_path, no_fd_leak):
    with mdevs("mtty-1", "mtty-1") as (a, b):
        with open_mdev(a, interface) as src, open_mdev(b, interface) as dst:
            uart_fill(src, 0, 0x07, 0x42, b"xyz")
            path = tmp_path / "mtty.vfiomig"
            with open(path, "wb") as f:
                rep = src.migration.save(f, precopy=False)
            assert rep.precopy_rounds == [] and rep.precopy_bytes == 0
            assert rep.stop_copy_bytes == HEADER_BYTES + PORT_BYTES
            assert [str(x) for x in rep.arcs] == ["RUNNING->RUNNING_P2P", "RUNNING_P2P->STOP", "STOP->STOP_COPY",
                                                  "STOP_COPY->STOP"]
            with open(path, "rb") as f:
                dst.migration.load(f)
            assert uart_state(dst, 0) == {"lcr": 0x07, "scr": 0x42, "lsr_dr": True, "fifo": b"xyz"}


def _saved(dev: Device) -> bytes:
    s = io.BytesIO()
    dev.migration.save(s)
    dev.migration.set_state(MigState.RUNNING)
    return s.getvalue()


@pytest.mark.parametrize("interface", PATHS)
def test_migrate_into_another_type_is_refused(interface, no_fd_leak):
    with mdevs("mtty-2", "mtty-1") as (a, b):
        with open_mdev(a, interface) as src, open_mdev(b, interface) as dst:
            uart_fill(src, 0, 0x03, 0xA5, b"ab")
            uart_fill(dst, 0, 0x01, 0x11, b"k")
            blob = _saved(src)
            with pytest.raises(StreamMismatch) as ei:
                dst.migration.load(io.BytesIO(blob))
            e = ei.value
            assert (e.field, e.saved, e.this) == ("mdev_type", "mtty-2", "mtty-1")
            assert e.state is MigState.RUNNING and "target left in RUNNING" in str(e)
            assert "offset 20" in str(e)
            # without the toolkit's check the driver refuses the header itself (nr_ports differs)
            with pytest.raises(MigrationFailed) as ei2:
                dst.migration.load(io.BytesIO(blob), check_identity=False)
            assert ei2.value.errno == errno.EFAULT and ei2.value.state is MigState.RUNNING
            assert "device left in RUNNING" in str(ei2.value)
            assert dst.migration.state is MigState.RUNNING and dst.migration.data is None
            assert uart_state(dst, 0) == {"lcr": 0x01, "scr": 0x11, "lsr_dr": True, "fifo": b"k"}


@pytest.mark.parametrize("interface", PATHS)
def test_truncated_and_corrupted_streams_are_refused(interface, no_fd_leak):
    with mdevs("mtty-2", "mtty-2") as (a, b):
        with open_mdev(a, interface) as src, open_mdev(b, interface) as dst:
            uart_fill(src, 0, 0x03, 0xA5, b"ab")
            blob = _saved(src)
            cases = []
            for cut in (10, 40, len(blob) - 30, len(blob) - 24):   # header, identity, STOP_COPY payload, before END
                cases.append((f"cut at {cut}", blob[:cut], StreamTruncated))
            bad = bytearray(blob)
            bad[-30] ^= 0xFF                                        # inside the STOP_COPY payload
            cases.append(("payload flipped", bytes(bad), StreamCorrupt))
            bad = bytearray(blob)
            bad[0] ^= 0xFF
            cases.append(("magic flipped", bytes(bad), StreamCorrupt))
            bad = bytearray(blob)
            bad[30] ^= 0x01                                         # inside the identity
            cases.append(("identity flipped", bytes(bad), StreamCorrupt))
            for label, data, kind in cases:
                uart_fill(dst, 0, 0x01, 0x11, b"")
                with pytest.raises(kind) as ei:
                    dst.migration.load(io.BytesIO(data))
                e = ei.value
                assert e.state is MigState.RUNNING, label
                assert f"offset {e.offset}" in str(e) and "target left in RUNNING" in str(e), (label, str(e))
                assert 0 <= e.offset <= len(data), label
                assert dst.migration.state is MigState.RUNNING and dst.migration.data is None, label
                # nothing of the bad stream reached the UART
                st = uart_state(dst, 0)
                assert (st["lcr"], st["scr"]) == (0x01, 0x11), label
            # and the good stream still loads
            dst.migration.load(io.BytesIO(blob))
            assert uart_state(dst, 0)["fifo"] == b"ab"


@pytest.mark.parametrize("interface", PATHS)
def test_set_state_every_pair_matches_the_kernel_rules(interface, no_fd_leak):
    with mdevs("mtty-1", "mtty-1") as (a, b):
        with open_mdev(a, interface) as src, open_mdev(b, interface) as dev:
            blob = io.BytesIO()
            src.migration.save(blob, precopy=False)
            # the raw device data of a compatible device, for pairs that leave RESUMING
            from vfio.migration import StreamReader, RecordKind
            r = StreamReader(io.BytesIO(blob.getvalue()))
            r.header()
            data = b""
            while True:
                kind, payload, _ = r.record()
                if kind is RecordKind.END:
                    break
                data += payload
            mig = dev.migration
            states = sorted(oracle_states(ALL))
            assert set(states) == {MigState(s) for s in states}
            checked = 0
            for first, second in itertools.product(states, repeat=2):
                mig.close()
                dev.reset()                         # the uAPI's way back to RUNNING from anywhere
                assert mig.state is MigState.RUNNING
                mig.set_state(first)
                if first is MigState.RESUMING:
                    mig.data.write_all(data)
                want = oracle_path(first, second)
                label = f"{first.name}->{second.name}"
                if want is None:
                    assert (first, second) in BLOCKED
                    with pytest.raises(UnsupportedTransition):
                        mig.set_state(second)
                    # the kernel agrees
                    with pytest.raises(VfioError) as ei:
                        dev.set_migration_state(int(second))
                    assert ei.value.errno == errno.EINVAL, label
                    assert mig.state is first, label
                    continue
                arcs = mig.set_state(second)
                assert [(x.src, x.dst) for x in arcs] == want, label
                for x in arcs:
                    assert isinstance(x, Arc)
                    assert x.data_fd == ((x.src, x.dst) in OPENS_DATA_FD), (label, str(x))
                assert mig.state is second, label
                checked += 1
            assert checked == 49 - len(BLOCKED)
            mig.close()
            dev.reset()
            # and the targets a device cannot take
            with pytest.raises(UnsupportedTransition, match="does not support ERROR"):
                mig.set_state(MigState.ERROR)
            assert mig.state is MigState.RUNNING


@pytest.mark.parametrize("interface", PATHS)
def test_passthrough_model_and_device_in_one_call(interface, no_fd_leak):
    from vfio.pci import regs as R
    from vfio.pci.passthrough import PassthroughDevice, StateMismatchError
    with mdevs("mtty-2", "mtty-2", "mtty-1") as (a, b, c):
        with open_mdev(a, interface) as d1, open_mdev(b, interface) as d2, open_mdev(c, interface) as d3, \
                PassthroughDevice(d1) as src, PassthroughDevice(d2) as dst, PassthroughDevice(d3) as other:
            # the guest programs BAR0 and turns I/O decoding on; the UART gets bytes
            src.config_write(R.BASE_ADDRESS_0, 4, 0xC000)
            src.config_write(R.COMMAND, 2, R.COMMAND_IO)
            assert src.io_read(0xC000 + SCR, 1) == 0
            src.io_write(0xC000 + LCR, 1, 0x03)
            src.io_write(0xC000 + SCR, 1, 0x5A)
            for ch in b"pt":
                src.io_write(0xC000 + RX_TX, 1, ch)
            stream = io.BytesIO()
            rep = src.save_migration(stream)
            assert rep.device_bytes == HEADER_BYTES + 2 * PORT_BYTES
            assert d1.migration.state is MigState.STOP

            # a model with another BAR layout (mtty-1 has no BAR1) refuses before its device is touched
            before = other.get_state()
            stream.seek(0)
            with pytest.raises(StreamMismatch):
                other.load_migration(stream)
            stream.seek(0)
            with pytest.raises(StateMismatchError):
                other.load_migration(stream, check_identity=False)
            assert other.get_state() == before and d3.migration.state is MigState.RUNNING

            stream.seek(0)
            dst.load_migration(stream)
            assert d2.migration.state is MigState.RUNNING
            assert dst.config_read(R.BASE_ADDRESS_0, 4) & ~0x3 == 0xC000
            assert dst.config_read(R.COMMAND, 2) & R.COMMAND_IO
            assert dst.io_read(0xC000 + LCR, 1) == 0x03 and dst.io_read(0xC000 + SCR, 1) == 0x5A
            assert bytes(dst.io_read(0xC000 + RX_TX, 1) for _ in range(2)) == b"pt"

            # a truncated stream: the model keeps its state, the device is named
            keep = dst.get_state()
            with pytest.raises(StreamTruncated) as ei:
                dst.load_migration(io.BytesIO(stream.getvalue()[:-40]))
            assert ei.value.state is MigState.RUNNING and dst.get_state() == keep


@pytest.mark.cdev
def test_migrate_between_the_two_paths(no_fd_leak):
    # a stream saved by a device opened through its group loads into one opened through its cdev
    with mdevs("mtty-1", "mtty-1") as (a, b):
        with open_mdev(a, "container") as src, open_mdev(b, "cdev") as dst:
            assert src.migration.identity() == dst.migration.identity()
            uart_fill(src, 0, 0x13, 0x77, b"path")
            s = io.BytesIO()
            src.migration.save(s, end_state=MigState.RUNNING)      # the source may also run on
            assert src.migration.state is MigState.RUNNING
            s.seek(0)
            dst.migration.load(s)
            assert uart_state(dst, 0) == {"lcr": 0x13, "scr": 0x77, "lsr_dr": True, "fifo": b"path"}
