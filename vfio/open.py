"""Choosing how to open a PCI device: the IOMMU context opens it.

VFIO offers two ways to own a device.  The legacy one goes through the
device's IOMMU group (``/dev/vfio/N``) attached to a container
(``/dev/vfio/vfio``), whose IOMMU model -- type1v2, or no-IOMMU -- is the DMA
space; the newer one opens the device's cdev (``/dev/vfio/devices/vfioN``),
binds it to an iommufd (``/dev/iommu``) and attaches it to an I/O address space
(IOAS).  Either context opens its devices itself and hands each its DMA space
and the leases it holds (:meth:`vfio.container.Container.open_device`,
:meth:`vfio.iommufd.IOAS.open_device`), as libvfn's ``iommu_ctx_ops`` pair
``dma_map``/``dma_unmap`` with ``get_device_fd``.  This module only picks the
context and creates it when the caller brings none.
"""

from __future__ import annotations

import os

from .container import Container
from .device import Device, Interface
from .errors import InvalidValue
from .group import normalize_bdf
from .sysfs import SysfsTree, available_interfaces  # noqa: F401  (its home is vfio.sysfs)

_CHOICES = ("auto", Interface.CONTAINER.value, Interface.CDEV.value)


def open_pci_device(bdf: str, interface: str = "auto", container: Container | None = None) -> Device:
    """Open a PCI device bound to vfio-pci.

    ``interface``: ``"container"`` (group + type1/no-IOMMU container), ``"cdev"``
    (``/dev/vfio/devices/vfioN`` + iommufd), or ``"auto"``: the container when the
    host has ``/dev/vfio/vfio``, else the cdev.  The returned Device owns what was
    created for it; its ``.dma`` is the DMA space (container or IOAS; ``None`` in
    no-IOMMU mode) and ``.interface`` (an :class:`~vfio.device.Interface`, equal to
    ``"container"``, ``"noiommu"`` or ``"cdev"``) says which path was used.

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
        interface = Interface.CONTAINER if container is not None or os.path.exists("/dev/vfio/vfio") \
            else Interface.CDEV
    if interface not in _CHOICES:
        raise InvalidValue(f"interface must be 'auto', 'container' or 'cdev', not {interface!r}")
    if interface == Interface.CDEV:
        if container is not None:
            raise InvalidValue("container= goes with interface 'container' (or 'auto'), not 'cdev'")
        from .iommufd import open_cdev_device
        return open_cdev_device(bdf)
    # looked up on the package at call time, where a stand-in for sysfs can replace it
    from . import group_path_of
    path = group_path_of(bdf)
    if container is not None:
        return container.open_device(bdf, path)
    # a lease on the container made here, released once the device's group holds its own,
    # so that a failure at any step closes it again
    made = Container()
    with made.lease(adopt=True):
        return made.open_device(bdf, path)


