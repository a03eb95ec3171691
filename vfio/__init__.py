"""vfio: a Python toolkit for Linux VFIO userspace device assignment.

Layers, bottom up:

* :mod:`vfio.uapi` -- the kernel ABI (the only module that issues ioctls).
* :mod:`vfio.container`, :mod:`vfio.group`, :mod:`vfio.iommufd` -- the fds that own
  an IOMMU context and give access to devices; :mod:`vfio.dma` -- DMA mapping.
* :mod:`vfio.backend` / :mod:`vfio.device` -- a device (regions, IRQs, reset) over
  a backend: the kernel, or a replayed record file (:mod:`vfio.record`).
* :mod:`vfio.pci` -- config space decoding, virtual config space, passthrough model.
* :mod:`vfio.host` -- sysfs model, ``vfio-inspect``, ``vfio-assign``.

Opening a device (here the first of QEMU's edu devices bound to vfio-pci)::

    import vfio
    from vfio.host.sysfs import Host
    bdf = Host().find("1234:11e8")[0].bdf                     # or an address: "0000:00:04.0"
    with vfio.open_pci_device(bdf) as dev:                    # group + container, type1v2
        bar0 = dev.region(0).map()
        print(hex(bar0.read32(0)))
        dev.enable_bus_master()                               # DMA and MSI need it
        buf = dev.dma.alloc(4096)                             # mapped for DMA at buf.iova
        buf.write(0, b"data for the device")

A second device of the same IOMMU group, or one that should share the first's
DMA space, is opened with ``vfio.open_pci_device(bdf2, container=dev.container)``.
"""

from __future__ import annotations

import os

from .container import Container, NoIommuWarning
from .device import Device, DeviceInfo, IrqInfo, KernelBackend, MappedRegion, Region, RegionInfo
from .dma import DmaBuffer, DmaMapping, DmaSpace, IovaAllocator
from .errors import Error, InvalidValue, RegionAccessError, UnsafeOperationError, VfioError
from .group import Group, group_path_of, iommu_group_of, normalize_bdf
from .irq import Dispatcher, EventFd

__all__ = [
    "Container", "Device", "DeviceInfo", "Dispatcher", "DmaBuffer", "DmaMapping", "DmaSpace",
    "Error", "EventFd", "Group", "InvalidValue", "IovaAllocator", "IrqInfo", "KernelBackend", "MappedRegion", "NoIommuWarning",
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

    ``container`` (implies the container interface): put the device's group in
    this container (so devices of several groups share one DMA space), or, when
    the container already holds the group (a second device of the group), open
    the device through that group.  The caller keeps owning a container it
    passed in.

    Closing the device releases, in order: the device fd (vfio-pci resets and
    disables the device), then, if no other device was opened through it, the
    group -- a group leaving its container last first unmaps the container's DMA
    mappings, because the kernel drops the IOMMU context with the last group --
    then the container, if it was created here and no group is left in it.

    Raises :class:`VfioError` (errno kept) when the kernel refuses a step (EBUSY:
    the group is already open elsewhere, e.g. by another process or a device
    opened without ``container=``), ``ValueError`` for a malformed address or
    interface.
    """
    bdf = normalize_bdf(bdf)
    if interface == "auto":
        interface = "container" if container is not None or os.path.exists("/dev/vfio/vfio") else "cdev"
    if interface == "cdev" and container is not None:
        raise InvalidValue("container= goes with interface 'container' (or 'auto'), not 'cdev'")
    if interface == "cdev":
        from .iommufd import open_cdev_device
        dev = open_cdev_device(bdf)
        dev.dma = dev.ioas
        dev.interface = "cdev"
        return dev
    if interface != "container":
        raise InvalidValue(f"interface must be 'auto', 'container' or 'cdev', not {interface!r}")
    # temporary leases on what is created here, released once the device holds its own
    # (device -> group -> container), so that a failure at any step closes them again
    held = []
    try:
        path = group_path_of(bdf)
        if container is None:
            container = Container()
            held.append(container.lease(adopt=True))
        group = container.group_for(path)
        if group is None:
            group = Group(path)
            held.append(group.lease(adopt=True))
            container.add_group(group)
        if container.iommu_type is None:
            container.set_iommu()
        dev = group.open_device(bdf)
    finally:
        while held:
            held.pop().close()
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
