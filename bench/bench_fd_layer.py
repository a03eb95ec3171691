#!/usr/bin/env python3
"""Benchmarks of the fd layer's hot paths, as ratios against a raw baseline in the same run.

1. ``MappedRegion.read32`` against ``ctypes.c_uint32.from_address(base + off).value``
   on the same mapping.  By default the mapping is BAR0 of the shipped edu capture
   (a memfd: the accessor code is the same as on a device mapping, and the numbers
   do not include device latency, which would hide the accessor's cost); with
   ``--bdf`` it is the real device's BAR0 (run it in the harness guest:
   ``tools/vfio-harness -- python3 bench/bench_fd_layer.py --bdf 0000:00:03.0``).
2. Eventfd interrupt dispatch: signal one of N eventfds and dispatch it through
   :class:`vfio.irq.Dispatcher`, against a raw ``select.epoll`` loop doing
   ``poll`` + ``os.eventfd_read`` over the same eventfds.

    python3 bench/bench_fd_layer.py [--n 200000] [--vectors 32] [--repeat 5] [--bdf BDF]

Prints one line per benchmark with both timings (best of --repeat) and the ratio.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import select
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import best  # noqa: E402
from vfio.irq import Dispatcher, EventFd  # noqa: E402
from vfio.record.replay import open_replay  # noqa: E402



def bench_read32(dev, n, repeat):
    with dev.region(0).map() as bar:
        base = bar._areas[0][3]
        offs = [(i * 4) & 0xFC for i in range(64)]

        def ours():
            r = bar.read32
            for _ in range(n // 64):
                for o in offs:
                    r(o)

        def raw():
            f = ctypes.c_uint32.from_address
            for _ in range(n // 64):
                for o in offs:
                    f(base + o).value

        assert all(bar.read32(o) == ctypes.c_uint32.from_address(base + o).value for o in offs)
        t_ours, t_raw = best(ours, repeat), best(raw, repeat)
    per = n // 64 * 64
    print(f"read32: toolkit {t_ours / per * 1e9:.0f} ns/read, raw ctypes {t_raw / per * 1e9:.0f} ns/read, "
          f"ratio {t_ours / t_raw:.2f}x")
    return t_ours / t_raw


def bench_dispatch(n, vectors, repeat):
    efds = [EventFd(f"v{i}") for i in range(vectors)]
    disp = Dispatcher()
    hits = [0]

    def handler(e, c):
        hits[0] += c
    disp.add_all(efds, handler)
    ep = select.epoll()
    byfd = {}
    for e in efds:
        ep.register(e.fd, select.EPOLLIN)
        byfd[e.fd] = e

    def ours():
        for i in range(n):
            efds[i % vectors].signal()
            disp.poll(0)

    def raw():
        count = 0
        for i in range(n):
            os.eventfd_write(efds[i % vectors].fd, 1)
            for fd, _ in ep.poll(0):
                count += os.eventfd_read(fd)
        return count

    t_ours = best(ours, repeat)
    assert hits[0] == n * repeat
    t_raw = best(raw, repeat)
    print(f"irq dispatch ({vectors} eventfds): toolkit {t_ours / n * 1e6:.2f} us/irq, "
          f"raw epoll {t_raw / n * 1e6:.2f} us/irq, ratio {t_ours / t_raw:.2f}x")
    disp.close()
    ep.close()
    for e in efds:
        e.close()
    return t_ours / t_raw


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200_000)
    ap.add_argument("--vectors", type=int, default=32)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--bdf", help="a device bound to vfio-pci (inside the harness guest)")
    a = ap.parse_args(argv)
    if a.bdf:
        import vfio
        dev = vfio.open_pci_device(a.bdf)
    else:
        dev = open_replay(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "records", "edu.vfiorec"))
    with dev:
        bench_read32(dev, a.n, a.repeat)
    bench_dispatch(a.n // 10, a.vectors, a.repeat)


if __name__ == "__main__":
    main()
