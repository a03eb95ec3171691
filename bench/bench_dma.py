#!/usr/bin/env python3
"""DMA map+unmap cost through the toolkit against the fastest raw ``fcntl.ioctl`` loop doing the same calls.

What is timed, per iteration, on one 64 KiB (``--size``) buffer allocated once:

* toolkit: ``m = space.map(buf); space.unmap(m)`` -- IOVA allocation, the
  bookkeeping (:class:`vfio.dma.DmaMapping`), the ioctl and its error handling;
* raw: the same two ioctls on argument structs built once before the loop
  (``fcntl.ioctl(fd, REQ, st, True)``; same struct, flags, IOVA and size as the
  toolkit sends), i.e. the least Python can do for a map and an unmap.

Paths (inside the harness guest, with a device bound to vfio-pci):

* container (type1): ``Container.map``/``unmap`` against raw
  VFIO_IOMMU_MAP_DMA/UNMAP_DMA;
* cdev (iommufd IOAS): ``IOAS.map``/``unmap`` against raw
  IOMMU_IOAS_MAP/UNMAP (when the kernel offers the VFIO cdev).

Rounds of toolkit and raw loops are interleaved (the order alternating each
round) so that drifts of a shared, emulated machine hit both alike; the output
is the median and the min-max of the per-round ratios, and the median
microseconds per map+unmap of each.  Rounds are short (10 pairs) and many (301)
by default: a host that deschedules the guest spoils a few rounds, which the
median leaves out.

``--breakdown`` adds, each against the raw loop: the DmaSpace primitives alone
(``_map``/``_unmap`` at a fixed IOVA), the raw loop plus an IOVA alloc/free, the
raw loop with its structs packed each time (as ``IoctlArgs`` packs them), the raw
loop through ``vfio.uapi.ioctl``, ``IoctlArgs.call`` alone (spare struct, pack,
chokepoint, the reply field read), and the raw loop plus 2, 4 and 10 empty Python calls -- the calibration that says
what a Python-level call costs in this guest (under QEMU TCG, several
microseconds).  2 is the floor of any Python API (``map()`` and ``unmap()``
themselves), 4 that floor with each ioctl through the one chokepoint function
(``vfio.uapi.ioctl``), 10 the toolkit's Python frames per map+unmap: ``map``,
``IovaAllocator.alloc``, the space's ``_map``, ``IoctlArgs.call``,
``uapi.ioctl``; ``unmap``, ``_unmap``, ``IoctlArgs.call``, ``uapi.ioctl``,
``IovaAllocator.free``.

``--host`` needs no device: the kernel call is replaced by a no-op function on
both sides (a Container and an IOAS on ``/dev/null``, ioctls never reaching the
kernel), so what is left is the Python cost alone: the toolkit's overhead in
nanoseconds per map+unmap over the raw loop's.

    tools/vfio-harness --kernel container -- python3 bench/bench_dma.py [--n 10] [--rounds 301] [--breakdown]
    tools/vfio-harness --kernel iommufd-container -- python3 bench/bench_dma.py
    python3 bench/bench_dma.py --host [--n 20000] [--rounds 21]

The built ``container`` kernel offers both the type1 container and the VFIO
cdev; on ``iommufd-container`` the container is iommufd's emulation of type1.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import glob
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import vfio  # noqa: E402
from vfio import uapi  # noqa: E402
from vfio.container import Container, IommuInfo  # noqa: E402
from vfio.iommufd import IOAS  # noqa: E402


def first_vfio_bdf():
    for link in sorted(glob.glob("/sys/bus/pci/drivers/vfio-pci/0000:*")):
        return os.path.basename(link)
    raise SystemExit("no device bound to vfio-pci (run inside tools/vfio-harness, or use --host)")


def raw_container(fd, vaddr, iova, size, ioctl):
    """The raw type1 loop body's structs, built once: MAP_DMA READ|WRITE, UNMAP_DMA."""
    m = uapi.vfio_iommu_type1_dma_map(ctypes.sizeof(uapi.vfio_iommu_type1_dma_map),
                                      uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE, vaddr, iova, size)
    u = uapi.vfio_iommu_type1_dma_unmap(ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap), 0, iova, size)
    rm, ru = uapi.VFIO_IOMMU_MAP_DMA, uapi.VFIO_IOMMU_UNMAP_DMA

    def raw(n):
        for _ in range(n):
            ioctl(fd, rm, m, True)
            ioctl(fd, ru, u, True)
    return raw, (ioctl, fd, rm, m, ru, u)


def raw_ioas(fd, ioas_id, vaddr, iova, size, ioctl):
    """The raw IOAS loop body's structs, built once: IOAS_MAP FIXED_IOVA|READABLE|WRITEABLE, IOAS_UNMAP."""
    m = uapi.iommu_ioas_map(size=ctypes.sizeof(uapi.iommu_ioas_map), ioas_id=ioas_id, user_va=vaddr, length=size,
                            iova=iova, flags=uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
                            | uapi.IOMMU_IOAS_MAP_WRITEABLE)
    u = uapi.iommu_ioas_unmap(size=ctypes.sizeof(uapi.iommu_ioas_unmap), ioas_id=ioas_id, iova=iova, length=size)
    rm, ru = uapi.IOMMU_IOAS_MAP, uapi.IOMMU_IOAS_UNMAP

    def raw(n):
        for _ in range(n):
            ioctl(fd, rm, m, True)
            ioctl(fd, ru, u, True)
    return raw, (ioctl, fd, rm, m, ru, u)


def container_codec(vaddr, iova, size):
    """The type1 primitives' IoctlArgs and values (Container._map/_unmap, read and write)."""
    return (vfio.container._MAP, (uapi.VFIO_DMA_MAP_FLAG_READ | uapi.VFIO_DMA_MAP_FLAG_WRITE, vaddr, iova, size),
            vfio.container._UNMAP, (0, iova, size), "size")


def ioas_codec(ioas):
    """The IOAS primitives' IoctlArgs and values (IOAS._map/_unmap at a fixed IOVA, read and write)."""
    flags = uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE | uapi.IOMMU_IOAS_MAP_WRITEABLE
    return lambda vaddr, iova, size: (vfio.iommufd._MAP, (flags, ioas.id, 0, vaddr, size, iova),
                                      vfio.iommufd._UNMAP, (ioas.id, iova, size), "length")


def toolkit_loop(space, buf):
    mp, um = space.map, space.unmap

    def ours(n):
        for _ in range(n):
            um(mp(buf))
    return ours


def interleaved(ours, raw, n, rounds):
    """Per-round (toolkit, raw) seconds for ``n`` iterations each, the order alternating."""
    out = []
    for r in range(rounds):
        pair = {}
        for name, fn in ((("ours", ours), ("raw", raw)) if r % 2 == 0 else (("raw", raw), ("ours", ours))):
            t0 = time.perf_counter()
            fn(n)
            pair[name] = time.perf_counter() - t0
        out.append((pair["ours"], pair["raw"]))
    return out


def report(label, rounds, n, host=False):
    ratios = sorted(o / r for o, r in rounds)
    t_ours = statistics.median(o for o, _ in rounds) / n
    t_raw = statistics.median(r for _, r in rounds) / n
    base = "raw fcntl.ioctl on prebuilt structs" + (" (kernel call: a no-op function)" if host else "")
    extra = f", toolkit overhead {(t_ours - t_raw) * 1e9:.0f} ns" if host else ""
    print(f"{label}: toolkit {t_ours * 1e6:.2f} us/map+unmap, baseline {base} {t_raw * 1e6:.2f} us{extra}; "
          f"ratio median {statistics.median(ratios):.2f}x (min {ratios[0]:.2f}, max {ratios[-1]:.2f}, "
          f"{len(ratios)} rounds of {n})")
    return statistics.median(ratios)


def breakdown_loops(space, buf, iova, raw_fn, raw_args, codec):
    """Where the toolkit's time goes: each layer added to the raw loop on its own
    (the raw ioctls inline in each loop, as in the raw loop).  ``codec`` is the
    space's pair of :class:`vfio.dma.IoctlArgs` with the values its primitives
    pass them: ``(map_args, map_values, unmap_args, unmap_values, answer field)``."""
    ioctl, fd, rm, m, ru, u = raw_args
    size, vaddr = buf.size, buf.vaddr
    map_args, map_values, unmap_args, unmap_values, answer = codec
    prim_map, prim_unmap = space._map, space._unmap
    alloc = space.allocator

    def primitives(n):          # the DmaSpace primitives at the raw loop's IOVA: no allocator, no bookkeeping
        for _ in range(n):
            prim_map(vaddr, iova, size, True, True)
            prim_unmap(iova, size)

    def raw_plus_allocator(n):  # the raw ioctls, then an IOVA allocated and freed (the same one)
        a, f = alloc.alloc, alloc.free
        for _ in range(n):
            ioctl(fd, rm, m, True)
            ioctl(fd, ru, u, True)
            f(a(size))

    def raw_packed(n):          # the raw ioctls, each struct filled first as IoctlArgs fills it (the same values)
        pm, pu, sm, su = map_args.pack_into, unmap_args.pack_into, map_args.size, unmap_args.size
        for _ in range(n):
            pm(m, 0, sm, *map_values)
            ioctl(fd, rm, m, True)
            pu(u, 0, su, *unmap_values)
            ioctl(fd, ru, u, True)

    def raw_chokepoint(n):      # the raw ioctls through vfio.uapi.ioctl, the toolkit's one ioctl
        chk = uapi.ioctl
        for _ in range(n):
            chk(fd, rm, m)
            chk(fd, ru, u)

    def ioctl_args(n):          # IoctlArgs.call: a spare struct, packed, the chokepoint, the reply field read
        cm, cu = map_args.call, unmap_args.call
        for _ in range(n):
            cm(fd, rm, map_values)
            cu(fd, ru, unmap_values, answer)

    def nop(*args):
        pass

    def raw_plus_2_calls(n):    # the floor of any Python API: map() and unmap() doing only the ioctl
        for _ in range(n):
            nop(1)
            ioctl(fd, rm, m, True)
            nop(1)
            ioctl(fd, ru, u, True)

    def raw_plus_4_calls(n):    # ... each through a chokepoint function (vfio.uapi.ioctl)
        for _ in range(n):
            nop(1); nop(1, 2)
            ioctl(fd, rm, m, True)
            nop(1); nop(1, 2)
            ioctl(fd, ru, u, True)

    def raw_plus_calls(n):      # calibration: the raw ioctls and 10 empty Python calls per map+unmap
        for _ in range(n):      # (the toolkit's Python frames per map+unmap: bench_dma.py docstring)
            nop(); nop(1); nop(1, 2); nop(1, 2, 3); nop(1)
            ioctl(fd, rm, m, True)
            nop(); nop(1); nop(1, 2); nop(1, 2, 3); nop(1)
            ioctl(fd, ru, u, True)
    return [("DmaSpace primitives (_map/_unmap)", primitives), ("raw + IovaAllocator alloc/free", raw_plus_allocator),
            ("raw + both structs packed", raw_packed), ("raw through vfio.uapi.ioctl", raw_chokepoint),
            ("IoctlArgs.call for both", ioctl_args),
            ("raw + 2 empty Python calls", raw_plus_2_calls), ("raw + 4 empty Python calls", raw_plus_4_calls),
            ("raw + 10 empty Python calls", raw_plus_calls)]


def bench(label, space, fd, make_raw, codec, a, host=False):
    buf = vfio.DmaBuffer(a.size)
    try:
        probe = space.map(buf)              # the IOVA the toolkit picks: the raw loop uses the same
        iova = probe.iova
        space.unmap(probe)
        ours = toolkit_loop(space, buf)
        raw, raw_args = make_raw(fd, buf.vaddr, iova, buf.size)
        ours(a.n // 10 or 1)                # warm both paths (first pinning, caches)
        raw(a.n // 10 or 1)
        if a.breakdown:
            for name, fn in breakdown_loops(space, buf, iova, raw, raw_args, codec(buf.vaddr, iova, buf.size)):
                fn(a.n // 10 or 1)
                report(f"{label} [{name}]", interleaved(fn, raw, a.n, a.rounds), a.n, host)
        return report(label, interleaved(ours, raw, a.n, a.rounds), a.n, host)
    finally:
        buf.close()


def guest(a):
    bdf = a.bdf or first_vfio_bdf()
    ioctl = fcntl.ioctl
    with vfio.open_pci_device(bdf, interface="container") as dev:
        c = dev.container
        bench("container (type1)", c, c.fd, lambda fd, va, iova, size: raw_container(fd, va, iova, size, ioctl),
              container_codec, a)
    if vfio.available_interfaces()["cdev"]:
        with vfio.open_pci_device(bdf, interface="cdev") as dev:
            ioas = dev.ioas
            bench("cdev (iommufd IOAS)", ioas, dev.iommufd.fd,
                  lambda fd, va, iova, size: raw_ioas(fd, ioas.id, va, iova, size, ioctl), ioas_codec(ioas), a)
    else:
        print("cdev (iommufd IOAS): not offered by this kernel")


class _HostContainer(Container):
    """A type1 container whose fd is /dev/null and whose IOMMU model is taken as set (--host only)."""

    def __init__(self):     # noqa: the real __init__ opens /dev/vfio/vfio
        super(Container, self).__init__()
        self.path, self.groups = "/dev/null (host bench)", []
        self.fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        self.iommu_type = uapi.VFIO_TYPE1v2_IOMMU
        self._info = IommuInfo(0, 0x1000, ((0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)), None, None)

    def iova_ranges(self) -> list:
        return list(self._info.iova_ranges)


class _HostIOAS(IOAS):
    """An IOAS of an "iommufd" on /dev/null (--host only)."""

    def __init__(self, holder):
        super().__init__(holder, 1)
        self._ranges, self.alignment = [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 39) - 1)], 0x1000

    def iova_ranges(self) -> list:
        return list(self._ranges)


def host(a):
    # both sides' kernel call is the same no-op: fcntl.ioctl is swapped for the run
    real = fcntl.ioctl

    def noop(fd, request, arg=0, mutate=True):
        return 0
    fcntl.ioctl = noop
    try:
        with _HostContainer() as c:
            bench("container (type1), host", c, c.fd,
                  lambda fd, va, iova, size: raw_container(fd, va, iova, size, noop), container_codec, a, host=True)
        fd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        try:
            holder = vfio.iommufd.IommuFD.__new__(vfio.iommufd.IommuFD)
            holder.path, holder.fd, holder._objects = "/dev/null (host bench)", fd, []
            ioas = _HostIOAS(holder)
            bench("cdev (iommufd IOAS), host", ioas, fd,
                  lambda fd, va, iova, size: raw_ioas(fd, ioas.id, va, iova, size, noop), ioas_codec(ioas), a,
                  host=True)
        finally:
            os.close(fd)
    finally:
        fcntl.ioctl = real


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, help="map+unmap pairs per round (default 10 in the guest, 20000 with --host)")
    ap.add_argument("--rounds", type=int, help="interleaved rounds of each (default 301 in the guest, 21 with --host)")
    ap.add_argument("--size", type=int, default=0x10000, help="buffer size in bytes (default 64 KiB)")
    ap.add_argument("--host", action="store_true", help="no device: Python cost only, kernel call a no-op")
    ap.add_argument("--breakdown", action="store_true",
                    help="also time the DmaSpace primitives alone and the raw loop plus the IOVA allocator")
    ap.add_argument("--bdf")
    a = ap.parse_args(argv)
    if a.n is None:
        a.n = 20000 if a.host else 10
    if a.rounds is None:
        a.rounds = 21 if a.host else 301
    if a.n < 1 or a.rounds < 1 or a.size < 1:
        ap.error("--n, --rounds and --size must be positive")
    (host if a.host else guest)(a)


if __name__ == "__main__":
    main()
