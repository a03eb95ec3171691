#!/usr/bin/env python3
"""DMA map/unmap cost through the toolkit against a raw ``fcntl.ioctl`` loop doing the same calls.

Runs inside the harness guest (it needs a device bound to vfio-pci); on a
built kernel it measures both paths:

* container (type1): ``Container.map``/``unmap`` (IOVA allocator + bookkeeping +
  VFIO_IOMMU_MAP_DMA/UNMAP_DMA) against raw MAP_DMA/UNMAP_DMA ioctls;
* cdev (iommufd): ``IOAS.map``/``unmap`` against raw IOMMU_IOAS_MAP/UNMAP ioctls.

The baseline calls ``fcntl.ioctl`` itself (on purpose: it is the thing measured
against); the structs and numbers come from :mod:`vfio.uapi`.

    tools/vfio-harness --kernel container -- python3 bench/bench_dma.py [--n 2000] [--size 65536]
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import glob
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from timing import best  # noqa: E402
import vfio  # noqa: E402
from vfio import uapi  # noqa: E402



def first_vfio_bdf():
    for link in sorted(glob.glob("/sys/bus/pci/drivers/vfio-pci/0000:*")):
        return os.path.basename(link)
    raise SystemExit("no device bound to vfio-pci (run inside tools/vfio-harness)")


def run(space, raw_map, raw_unmap, n, size, repeat, label):
    buf = vfio.DmaBuffer(size)
    iova = space.allocator.alloc(size)          # the raw loop's own fixed IOVA
    try:
        def ours():
            for _ in range(n):
                space.unmap(space.map(buf))

        def raw():
            for _ in range(n):
                raw_map(buf.vaddr, iova, size)
                raw_unmap(iova, size)
        t_ours, t_raw = best(ours, repeat), best(raw, repeat)
    finally:
        space.allocator.free(iova)
        buf.close()
    print(f"{label}: toolkit {t_ours / n * 1e6:.1f} us/map+unmap, raw ioctl {t_raw / n * 1e6:.1f} us, "
          f"ratio {t_ours / t_raw:.2f}x")


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--size", type=int, default=0x10000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--bdf")
    a = ap.parse_args(argv)
    bdf = a.bdf or first_vfio_bdf()

    with vfio.open_pci_device(bdf, interface="container") as dev:
        c = dev.container

        def m(vaddr, iova, size):
            st = uapi.vfio_iommu_type1_dma_map(ctypes.sizeof(uapi.vfio_iommu_type1_dma_map), 3, vaddr, iova, size)
            fcntl.ioctl(c.fd, uapi.VFIO_IOMMU_MAP_DMA, st, True)

        def u(iova, size):
            st = uapi.vfio_iommu_type1_dma_unmap(ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap), 0, iova, size)
            fcntl.ioctl(c.fd, uapi.VFIO_IOMMU_UNMAP_DMA, st, True)
        run(c, m, u, a.n, a.size, a.repeat, "container (type1)")

    if vfio.available_interfaces()["cdev"]:
        with vfio.open_pci_device(bdf, interface="cdev") as dev:
            ioas, fd = dev.ioas, dev.iommufd.fd

            def m2(vaddr, iova, size):
                st = uapi.iommu_ioas_map(size=ctypes.sizeof(uapi.iommu_ioas_map), flags=7, ioas_id=ioas.id,
                                         user_va=vaddr, length=size, iova=iova)
                fcntl.ioctl(fd, uapi.IOMMU_IOAS_MAP, st, True)

            def u2(iova, size):
                st = uapi.iommu_ioas_unmap(size=ctypes.sizeof(uapi.iommu_ioas_unmap), ioas_id=ioas.id,
                                           iova=iova, length=size)
                fcntl.ioctl(fd, uapi.IOMMU_IOAS_UNMAP, st, True)
            run(ioas, m2, u2, a.n, a.size, a.repeat, "cdev (iommufd IOAS)")
    else:
        print("cdev (iommufd IOAS): not offered by this kernel")


if __name__ == "__main__":
    main()
