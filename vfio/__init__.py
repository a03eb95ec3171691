"""vfio: a Python toolkit for Linux VFIO userspace device assignment.

Layers, bottom up:

* :mod:`vfio.errors` -- ``vfio.Error``, the root of every error the toolkit raises;
  :mod:`vfio.address` -- ``PciAddress``; :mod:`vfio._resource` -- owned and shared fds.
* :mod:`vfio.uapi` -- the kernel ABI (the only module that issues ioctls).
* :mod:`vfio.container`, :mod:`vfio.group`, :mod:`vfio.iommufd` -- the fds that own
  an IOMMU context; the context opens devices (``Container.open_device``,
  ``IOAS.open_device``) and hands them their DMA space; :mod:`vfio.dma` -- DMA mapping;
  :mod:`vfio.open` -- ``open_pci_device``, the chooser between the two contexts.
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

from .address import PciAddress
from .container import Container, NoIommuWarning
from .device import Device, DeviceInfo, Interface, IrqInfo, KernelBackend, MappedRegion, Region, RegionInfo
from .dma import DmaBuffer, DmaMapping, DmaSpace, IovaAllocator
from .errors import Error, InvalidValue, RegionAccessError, UnsafeOperationError, VfioError
from .group import Group, group_path_of, iommu_group_of, normalize_bdf
from .irq import Dispatcher, EventFd
from .open import available_interfaces, open_pci_device

__all__ = [
    "Container", "Device", "DeviceInfo", "Dispatcher", "DmaBuffer", "DmaMapping", "DmaSpace",
    "Error", "EventFd", "Group", "Interface", "InvalidValue", "IovaAllocator", "IrqInfo", "KernelBackend", "MappedRegion", "NoIommuWarning", "PciAddress",
    "Region", "RegionAccessError", "RegionInfo", "UnsafeOperationError", "VfioError",
    "open_pci_device", "available_interfaces",
]
