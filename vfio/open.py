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

import errno
import os

from .container import Container
from .device import Device, Interface
from .errors import InvalidValue, VfioError
from .group import normalize_bdf
from .sysfs import SysfsTree, available_interfaces  # noqa: F401  (its home is vfio.sysfs)

_CHOICES = ("auto", Interface.CONTAINER.value, Interface.CDEV.value)


def choose_interface(interface: str, container: Container | None = None,
                     container_node: str = "/dev/vfio/vfio") -> Interface:
    """The path an opener takes: ``interface`` ``"container"`` or ``"cdev"`` as
    given, ``"auto"`` the container when one is passed in or the host has the
    container node (``container_node``), else the cdev.  Raises ``ValueError``
    for another word, or for ``container`` given with ``"cdev"``."""
    if interface == "auto":
        return Interface.CONTAINER if container is not None or os.path.exists(container_node) \
            else Interface.CDEV
    if interface not in _CHOICES:
        raise InvalidValue(f"interface must be 'auto', 'container' or 'cdev', not {interface!r}")
    if interface == Interface.CDEV and container is not None:
        raise InvalidValue("container= goes with interface 'container' (or 'auto'), not 'cdev'")
    return Interface(interface)


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

    Cassettes (:mod:`vfio.record.cassette`): ``bdf`` may be the path of a cassette
    instead, which is then replayed (no VFIO needed); and while recording is asked
    for (``$VFIO_RECORD``, :func:`vfio.record.cassette.recording`, ``vfio-record``)
    the device opened is recorded to that cassette.

    Raises :class:`VfioError` (errno kept) when the kernel refuses a step (EBUSY:
    the group is already open elsewhere, e.g. by another process or a device
    opened without ``container=``), ``ValueError`` for a malformed address or
    interface, ``RecordFormatError`` for a malformed cassette.
    """
    from .record import cassette
    if cassette.is_cassette_path(bdf):
        return cassette.open_cassette(bdf)
    bdf = normalize_bdf(bdf)
    if choose_interface(interface, container) == Interface.CDEV:
        from .iommufd import open_cdev_device
        return cassette.record_if_requested(open_cdev_device(bdf))
    # looked up on the package at call time, where a stand-in for sysfs can replace it
    from . import group_path_of
    path = group_path_of(bdf)
    if container is not None:
        return cassette.record_if_requested(container.open_device(bdf, path))
    # a lease on the container made here, released once the device's group holds its own,
    # so that a failure at any step closes it again
    made = Container()
    with made.lease(adopt=True):
        return cassette.record_if_requested(made.open_device(bdf, path))


def open_mdev_device(uuid: str, interface: str = "auto", container: Container | None = None, *,
                     sysfs: SysfsTree | str = "/") -> Device:
    """Open a mediated device (mdev) by its UUID, through its IOMMU group or its cdev.

    An mdev (see :mod:`vfio.host.mdev`) is a VFIO device like any other to its
    user: VFIO gives it an IOMMU group of its own (``/dev/vfio/N``, an
    "emulated IOMMU" group: the parent driver pins and translates the DMA it
    does) and, on a kernel with ``CONFIG_VFIO_DEVICE_CDEV``, a cdev
    (``/sys/bus/mdev/devices/UUID/vfio-dev/vfioN``).  The group hands the device
    out by its UUID (``VFIO_GROUP_GET_DEVICE_FD``); the cdev is bound to an
    iommufd and attached to an IOAS like a vfio-pci device's.

    ``interface``, ``container`` and what the returned :class:`Device` owns and
    closes are as for :func:`open_pci_device`; its ``name`` is the UUID (lower
    case).  What the device offers is the parent driver's: its flags, regions and
    IRQs as ``VFIO_DEVICE_GET_INFO`` and friends report them.  An mdev type whose
    ``device_api`` is ``vfio-pci`` (mtty, mdpy, GVT-g) reports
    ``VFIO_DEVICE_FLAGS_PCI`` and vfio-pci's region and IRQ indexes
    (``dev.config`` is its config space); other APIs (``vfio-ccw``, ``vfio-ap``)
    report their own flags and indexes, and ``dev.config`` raises for them as
    for any device that is not PCI.  ``sysfs``: the root (or a
    :class:`~vfio.sysfs.SysfsTree`) the mdev is looked up under.

    The type's ``device_api`` is held against the device's flags: a device that
    does not report the flag of its API (``VFIO_DEVICE_FLAGS_PCI`` for
    ``vfio-pci``, ``_PLATFORM``, ``_AMBA``, ``_CCW``, ``_AP``) is closed again
    and refused (EPROTO): its region indexes would not mean what the API says.
    An API unknown here is not checked.

    Raises :class:`VfioError` (errno kept): ENODEV no such mdev, ENOENT no group
    node or cdev, EBUSY the group is open elsewhere, EPROTO the device contradicts
    its ``device_api``; ``ValueError`` for a malformed UUID or interface.
    """
    dev = _open_mdev(uuid, interface, container, sysfs)
    try:
        _check_device_api(dev, sysfs)
    except BaseException:
        dev.close()
        raise
    return dev


def _check_device_api(dev: Device, sysfs) -> None:
    from . import uapi
    from .host.mdev import mdev_device_api
    api = mdev_device_api(dev.name, sysfs)
    flag = {"vfio-pci": uapi.VFIO_DEVICE_FLAGS_PCI, "vfio-platform": uapi.VFIO_DEVICE_FLAGS_PLATFORM,
            "vfio-amba": uapi.VFIO_DEVICE_FLAGS_AMBA, "vfio-ccw": uapi.VFIO_DEVICE_FLAGS_CCW,
            "vfio-ap": uapi.VFIO_DEVICE_FLAGS_AP}.get(str(api))
    if flag is not None and not dev.info.flags & flag:
        raise VfioError(errno.EPROTO, f"mdev {dev.name}: its type's device_api is {api}, but "
                                      f"VFIO_DEVICE_GET_INFO reports flags {dev.info.flags:#x} without {api}'s flag")


def _open_mdev(uuid: str, interface, container, sysfs) -> Device:
    # the mdev's sysfs facts live with the rest of the mdev model (a module without fd-layer imports)
    from .host.mdev import mdev_cdev_path, mdev_group_path, normalize_uuid
    uuid = normalize_uuid(uuid)
    if choose_interface(interface, container) == Interface.CDEV:
        from .iommufd import open_cdev_node
        return open_cdev_node(mdev_cdev_path(uuid, sysfs), uuid)
    path = mdev_group_path(uuid, sysfs)
    if container is not None:
        return container.open_device(uuid, path)
    made = Container()
    with made.lease(adopt=True):
        return made.open_device(uuid, path)


def open_platform_device(name: str, interface: str = "auto", container: Container | None = None) -> Device:
    """Open a device-tree (platform or AMBA) device bound to vfio-platform or
    vfio-amba by its device name, e.g. ``a000000.virtio_mmio``: see
    :func:`vfio.platform.open_platform_device` (same ``interface`` and
    ``container`` rules as :func:`open_pci_device`)."""
    from .platform import open_platform_device as _open
    return _open(name, interface, container)
