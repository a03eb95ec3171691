#!/usr/bin/env python3
"""Migration data rate: ``Migration.save`` against a raw ``os.read`` loop on the data fd.

Two sources of device data:

* guest (default, inside the harness with the built kernels): the kernel's sample
  mtty (an mtty-2 device made for the run and removed after).  One save cycle is
  RUNNING -> STOP_COPY, the data fd read to EOF, back to RUNNING.  toolkit:
  ``dev.migration.save(sink, precopy=False)`` (identity, framing, CRC-32 into a
  stream that discards) then ``set_state(RUNNING)``; raw: the same SETs as bare
  ``fcntl.ioctl`` calls on structs built once, ``os.read`` until EOF, ``os.close``.
  mtty's whole state is 96 bytes, so this is the cost of a save cycle, not a
  bandwidth: the MB/s printed are what a driver with a state that small gets.
* ``--host``: no device: a fake migration driver whose STOP_COPY data fd is a pipe
  fed ``--mib`` MiB by a thread; raw reads the same pipe with ``os.readv`` into one
  buffer.  This is the bulk rate of save's reading, framing and CRC.

Rounds of toolkit and raw alternate (``bench/timing.py``); best of each.

    tools/vfio-harness --kernel container --devices edu --bind edu -- python3 bench/bench_migration.py
    tools/vfio-harness --kernel iommufd-container --devices edu --bind edu -- python3 bench/bench_migration.py --interface cdev
    python3 bench/bench_migration.py --host [--mib 64]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import sys
import threading

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from timing import best_interleaved  # noqa: E402

import vfio  # noqa: E402
from vfio import uapi  # noqa: E402
from vfio.migration import MigState, Migration  # noqa: E402


class Sink:
    """A binary stream that keeps nothing (what is timed is the save, not storage)."""

    def __init__(self):
        self.n = 0

    def write(self, b) -> int:
        self.n += len(b)
        return len(b)


# ---- guest: mtty ----------------------------------------------------------------------

def _raw_set(fd: int, state: int) -> int:
    hdr = uapi.vfio_device_feature(ctypes.sizeof(uapi.vfio_device_feature) + 8,
                                   uapi.VFIO_DEVICE_FEATURE_SET | uapi.VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE)
    buf = bytearray(bytes(hdr) + bytes(uapi.vfio_device_feature_mig_state(device_state=state, data_fd=-1)))
    fcntl.ioctl(fd, uapi.VFIO_DEVICE_FEATURE, buf, True)
    return uapi.vfio_device_feature_mig_state.from_buffer_copy(buf, 8).data_fd


def guest(args) -> None:
    from vfio.host.mdev import create_mdev, remove_mdev
    uid = create_mdev("mtty", "mtty-2")
    try:
        with vfio.open_mdev_device(uid, interface=args.interface) as dev:
            mig = dev.migration
            fd = dev.fileno()
            nbytes = []

            def toolkit():
                s = Sink()
                rep = mig.save(s, precopy=False)
                mig.set_state(MigState.RUNNING)
                nbytes.append(rep.device_bytes)

            def raw():
                _raw_set(fd, uapi.VFIO_DEVICE_STATE_RUNNING_P2P)
                _raw_set(fd, uapi.VFIO_DEVICE_STATE_STOP)
                dfd = _raw_set(fd, uapi.VFIO_DEVICE_STATE_STOP_COPY)
                n = 0
                while True:
                    b = os.read(dfd, 1 << 20)
                    if not b:
                        break
                    n += len(b)
                os.close(dfd)
                _raw_set(fd, uapi.VFIO_DEVICE_STATE_STOP)
                _raw_set(fd, uapi.VFIO_DEVICE_STATE_RUNNING_P2P)
                _raw_set(fd, uapi.VFIO_DEVICE_STATE_RUNNING)
                nbytes.append(n)

            t_tk, t_raw = best_interleaved([lambda: [toolkit() for _ in range(args.n)],
                                            lambda: [raw() for _ in range(args.n)]], args.repeat)
            size = nbytes[0]
            assert all(x == size for x in nbytes), nbytes
            _report(f"mtty-2 over {dev.interface}", size, args.n, t_tk, t_raw)
    finally:
        remove_mdev(uid)


# ---- host: a fake driver with a pipe --------------------------------------------------
class _PipeDriver:
    """Enough of vfio.device.Device for Migration.save: STOP_COPY's data fd is a pipe a
    thread fills with ``size`` bytes."""

    def __init__(self, size: int):
        self.name, self.size, self.state = "fake", size, MigState.RUNNING
        from types import SimpleNamespace
        self.info = SimpleNamespace(flags=0, num_irqs=0, is_pci=False)
        self.regions = []
        self.threads = []

    def migration_flags(self):
        return uapi.VFIO_MIGRATION_STOP_COPY | uapi.VFIO_MIGRATION_P2P

    def migration_state(self):
        return int(self.state)

    def feature(self, *a):
        raise vfio.VfioError(25, "no MIG_DATA_SIZE")        # ENOTTY: the estimate is optional

    def set_migration_state(self, s):
        s = MigState(s)
        fd = -1
        if s is MigState.STOP_COPY:
            fd = feed_pipe(self.size, self.threads)
        self.state = s
        return fd


def feed_pipe(size: int, threads: list) -> int:
    r, w = os.pipe()
    block = bytes(range(256)) * 4096          # 1 MiB

    def fill():
        left = size
        while left:
            left -= os.write(w, block[:min(left, len(block))])
        os.close(w)
    t = threading.Thread(target=fill)
    t.start()
    threads.append(t)
    return r


def host(args) -> None:
    size = args.mib << 20
    drv = _PipeDriver(size)
    mig = Migration(drv)
    buf = bytearray(1 << 20)

    def toolkit():
        rep = mig.save(Sink(), precopy=False)
        assert rep.device_bytes == size
        mig.set_state(MigState.RUNNING)

    def raw():
        threads = []
        r = feed_pipe(size, threads)
        n = 0
        while True:
            k = os.readv(r, [buf])
            if not k:
                break
            n += k
        os.close(r)
        assert n == size

    t_tk, t_raw = best_interleaved([toolkit, raw], args.repeat)
    for t in drv.threads:
        t.join()
    _report("fake driver, pipe", size, 1, t_tk, t_raw)


def _report(what: str, size: int, n: int, t_tk: float, t_raw: float) -> None:
    mb = size * n / 1e6
    print(f"{what}: {size} bytes of device data per save, {n} saves per round")
    print(f"  raw os.read loop : {mb / t_raw:10.3f} MB/s  ({t_raw / n * 1e6:9.1f} us per save)")
    print(f"  Migration.save   : {mb / t_tk:10.3f} MB/s  ({t_tk / n * 1e6:9.1f} us per save)")
    print(f"  ratio (time)     : {t_tk / t_raw:.2f}x")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--host", action="store_true", help="no device: a fake driver's pipe")
    ap.add_argument("--mib", type=int, default=64, help="--host: MiB of device data (64)")
    ap.add_argument("--interface", default="auto", choices=["auto", "container", "cdev"])
    ap.add_argument("--n", type=int, default=20, help="guest: saves per round (20)")
    ap.add_argument("--repeat", type=int, default=7, help="rounds of each (7)")
    args = ap.parse_args()
    host(args) if args.host else guest(args)


if __name__ == "__main__":
    main()
