"""vfio: a Python toolkit for Linux VFIO userspace device assignment.

Layers, bottom up:

* :mod:`vfio.uapi` -- the kernel ABI (the only module that issues ioctls).
* :mod:`vfio.container`, :mod:`vfio.group`, :mod:`vfio.iommufd` -- the fds that own
  an IOMMU context and give access to devices; :mod:`vfio.dma` -- DMA mapping.
* :mod:`vfio.backend` / :mod:`vfio.device` -- a device (regions, IRQs, reset) over
  a backend: the kernel, or a replayed record file (:mod:`vfio.record`).
* :mod:`vfio.pci` -- config space decoding, virtual config space, passthrough model.
* :mod:`vfio.host` -- sysfs model, ``vfio-inspect``, ``vfio-assign``.

Opening a device::

    import vfio
    with vfio.open_pci_device("0000:00:04.0") as dev:        # group + container, type1v2
        bar0 = dev.region(0).map()
        print(hex(bar0.read32(0)))
        buf = dev.dma.alloc(4096)                             # mapped for DMA at buf.iova
"""

from __future__ import annotations

import os

from .container import Container, NoIommuWarning
from .device import Device, DeviceInfo, IrqInfo, KernelBackend, MappedRegion, Region, RegionInfo
from .dma import DmaBuffer, DmaMapping, DmaSpace, IovaAllocator
from .errors import RegionAccessError, UnsafeOperationError, VfioError
from .group import Group, group_path_of, iommu_group_of, normalize_bdf
from .irq import Dispatcher, EventFd

__all__ = [
    "Container", "Device", "DeviceInfo", "Dispatcher", "DmaBuffer", "DmaMapping", "DmaSpace",
    "EventFd", "Group", "IovaAllocator", "IrqInfo", "KernelBackend", "MappedRegion", "NoIommuWarning",
    "Region", "RegionAccessError", "RegionInfo", "UnsafeOperationError", "VfioError",
    "open_pci_device", "available_interfaces",
]


def open_pci_device(bdf: str, interface: str = "auto", container: Container | None = None) -> Device:
    """Open a PCI device bound to vfio-pci.

    ``interface``: ``"container"`` (group + type1/no-IOMMU container), ``"cdev"``
    (``/dev/vfio/devices/vfioN`` + iommufd), or ``"auto"``: the container when the
    host has ``/dev/vfio/vfio``, else the cdev.  The returned Device owns what was
    created for it; its ``.dma`` is the DMA space (container or IOAS; ``None`` in
    no-IOMMU mode) and ``.interface`` says which path was used.
    """
    bdf = normalize_bdf(bdf)
    if interface == "auto":
        interface = "container" if os.path.exists("/dev/vfio/vfio") else "cdev"
    if interface == "cdev":
        from .iommufd import open_cdev_device
        dev = open_cdev_device(bdf)
        dev.dma = dev.ioas
        dev.interface = "cdev"
        return dev
    if interface != "container":
        raise ValueError(f"interface must be 'auto', 'container' or 'cdev', not {interface!r}")
    owns = []
    try:
        group = Group(group_path_of(bdf))
        owns.append(group)
        if container is None:
            container = Container()
            owns.insert(0, container)      # closed after the group (owns is popped from the end)
        container.add_group(group)
        if container.iommu_type is None:
            container.set_iommu()
        dev = group.open_device(bdf)
    except BaseException:
        for o in reversed(owns):
            o.close()
        raise
    dev._owns.extend(owns)
    dev.group = group
    dev.container = container
    dev.dma = None if container.noiommu else container
    dev.interface = "noiommu" if container.noiommu else "container"
    return dev


def available_interfaces(devdir: str = "/dev") -> dict:
    """Which VFIO interfaces this host offers: the legacy container, the cdev path
    (``/dev/vfio/devices`` + ``/dev/iommu``), and no-IOMMU groups."""
    vdir = os.path.join(devdir, "vfio")
    names = os.listdir(vdir) if os.path.isdir(vdir) else []
    return {
        "container": os.path.exists(os.path.join(vdir, "vfio")),
        "cdev": os.path.isdir(os.path.join(vdir, "devices")) and os.path.exists(os.path.join(devdir, "iommu")),
        "noiommu_groups": sorted(n for n in names if n.startswith("noiommu-")),
        "groups": sorted((n for n in names if n.isdigit()), key=int),
    }
