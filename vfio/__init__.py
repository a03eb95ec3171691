"""vfio: a Python toolkit for Linux VFIO userspace device assignment.

Layers, bottom up:

* :mod:`vfio.errors` -- ``vfio.Error``, the root of every error the toolkit raises;
  :mod:`vfio.address` -- ``PciAddress``; :mod:`vfio.sysfs` -- ``SysfsTree``, the one
  read door to a live or captured sysfs tree; :mod:`vfio._resource` -- owned and
  shared fds; :mod:`vfio.memory` -- mmap and every access by address (BARs, DMA
  buffers, direct areas).
* :mod:`vfio.uapi` -- the kernel ABI: the structs, and ``ioctl()`` and ``open_node()``,
  the chokepoints every ioctl and device-node open goes through.
* :mod:`vfio.container`, :mod:`vfio.group`, :mod:`vfio.iommufd` -- the fds that own
  an IOMMU context; the context opens devices (``Container.open_device``,
  ``IOAS.open_device``) and hands them their DMA space; :mod:`vfio.dma` -- DMA mapping;
  :mod:`vfio.irq` -- eventfds and their dispatcher;
  :mod:`vfio.open` -- ``open_pci_device``, the chooser between the two contexts.
* :mod:`vfio.backend` / :mod:`vfio.device` -- a device (regions, IRQs, reset) over
  a backend: the kernel, or a replayed record file (:mod:`vfio.record`).
* :mod:`vfio.pci` -- the register layer (``regs``, typed capability views in ``caps``),
  config space decoding, virtual config space, passthrough model.
* :mod:`vfio.host` -- sysfs model (read through :mod:`vfio.sysfs`, writes here),
  ``vfio-inspect``, ``vfio-assign``.

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

from ._lazy import lazy_face

from typing import TYPE_CHECKING

if TYPE_CHECKING:   # what linters and type checkers see; at run time these load on first use (below)
    from .address import PciAddress
    from .container import Container, NoIommuWarning
    from .device import Device, DeviceInfo, Interface, IrqInfo, KernelBackend, MappedRegion, Region, RegionInfo
    from .dma import DmaBuffer, DmaMapping, DmaSpace, IovaAllocator
    from .errors import Error, InvalidValue, RegionAccessError, UnsafeOperationError, VfioError
    from .group import Group, group_path_of, iommu_group_of, normalize_bdf
    from .irq import Dispatcher, EventFd
    from .open import open_mdev_device, open_pci_device, open_platform_device
    from .sysfs import available_interfaces

# The package face is loaded lazily (PEP 562): ``import vfio.host.inspect`` runs
# this file first, and the host tools use none of the fd layer, whose imports
# (ctypes, the ioctl table, the device model) were most of vfio-inspect's start-up.
# ``vfio.Container``, ``from vfio import Device`` and ``vfio.uapi`` work as before.
_LAZY = {
    "address": ("PciAddress",),
    "container": ("Container", "NoIommuWarning"),
    "device": ("Device", "DeviceInfo", "Interface", "IrqInfo", "KernelBackend", "MappedRegion", "Region",
               "RegionInfo"),
    "dma": ("DmaBuffer", "DmaMapping", "DmaSpace", "IovaAllocator"),
    "errors": ("Error", "InvalidValue", "RegionAccessError", "UnsafeOperationError", "VfioError"),
    "group": ("Group", "group_path_of", "iommu_group_of", "normalize_bdf"),
    "irq": ("Dispatcher", "EventFd"),
    "open": ("open_pci_device", "open_mdev_device", "open_platform_device"),
    "sysfs": ("available_interfaces",),     # re-exported by vfio.open too
}
__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)

__all__ = [
    "Container", "Device", "DeviceInfo", "Dispatcher", "DmaBuffer", "DmaMapping", "DmaSpace",
    "Error", "EventFd", "Group", "Interface", "InvalidValue", "IovaAllocator", "IrqInfo", "KernelBackend", "MappedRegion", "NoIommuWarning", "PciAddress",
    "Region", "RegionAccessError", "RegionInfo", "UnsafeOperationError", "VfioError",
    "open_pci_device", "open_mdev_device", "open_platform_device", "available_interfaces",
]
