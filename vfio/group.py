"""VFIO groups: ``/dev/vfio/N``, the unit of isolation.

The IOMMU isolates groups of devices, not single devices: a group is
*viable* only when every device in it is bound to a VFIO driver (or to no
driver, or to one the kernel knows is harmless, such as pci-stub or a bridge's
pcieport).  A viable group is attached to a container
(``VFIO_GROUP_SET_CONTAINER``), and only then hands out device fds
(``VFIO_GROUP_GET_DEVICE_FD`` with the device's name, e.g. its BDF).
``VFIO_GROUP_GET_STATUS`` is the kernel's own word on viability and is the
authority over any list of driver names.

A group node may be open only once at a time, and every device of the group
is reached through that one fd: to use two devices of a group, open the second
through the same group (``vfio.open_pci_device(bdf2, container=dev1.container)``
finds the group in the container and does that).  The group stays open, and in
its container, until the last device opened through it is closed.

No-IOMMU groups are ``/dev/vfio/noiommu-N`` (see :mod:`vfio.container`).
"""

from __future__ import annotations

import ctypes
import errno
import os

from . import uapi
from .address import PciAddress
from .device import Device, KernelBackend
from .errors import VfioError, wrap_oserror
from ._resource import OwnedFd, Shared

VFIO_DEV_DIR = "/dev/vfio"
SYSFS_PCI = "/sys/bus/pci/devices"


def normalize_bdf(bdf: str) -> str:
    """'00:04.0' -> '0000:00:04.0'; anything else malformed is a ValueError naming it."""
    return str(PciAddress.parse(bdf))


def iommu_group_of(bdf: str, sysfs: str = SYSFS_PCI) -> str:
    """The IOMMU group name of a PCI device ('7', or e.g. '0' for noiommu-0)."""
    bdf = normalize_bdf(bdf)
    link = os.path.join(sysfs, bdf, "iommu_group")
    if not os.path.exists(os.path.join(sysfs, bdf)):
        raise VfioError(errno.ENODEV, f"PCI device {bdf}: no {os.path.join(sysfs, bdf)}")
    try:
        return os.path.basename(os.readlink(link))
    except OSError as e:
        raise wrap_oserror(e, f"IOMMU group of {bdf} ({link}): device has no IOMMU group "
                              "(no IOMMU, or not enabled on the kernel command line)") from None


def group_path_of(bdf: str, sysfs: str = SYSFS_PCI, devdir: str = VFIO_DEV_DIR) -> str:
    """The /dev/vfio node of a device's group: N, or noiommu-N in no-IOMMU mode."""
    g = iommu_group_of(bdf, sysfs)
    for name in (g, f"noiommu-{g}"):
        p = os.path.join(devdir, name)
        if os.path.exists(p):
            return p
    raise VfioError(errno.ENOENT, f"group {g} of {bdf}: no {os.path.join(devdir, g)} "
                                  "(is the device bound to vfio-pci?)")


class Group(OwnedFd, Shared):
    """An open VFIO group node.

    Each device opened through it (:meth:`open_device`) holds a lease on it, and the
    group holds one on its container while attached.  A group
    :func:`vfio.open_pci_device` opened closes (leaving its container) with the
    last of its devices; one the caller opened stays open until the caller closes it.
    """

    def __init__(self, path_or_id):
        path = path_or_id if isinstance(path_or_id, str) and "/" in path_or_id else \
            os.path.join(VFIO_DEV_DIR, str(path_or_id))
        self.path = path
        self.container = None
        self._container_lease = None
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            hint = ""
            if e.errno == errno.EBUSY:
                hint = (" (already open: a group may be opened once at a time; to open another device "
                        "of an open group, pass container=<the first device>.container to "
                        "vfio.open_pci_device, or use <the first device>.group.open_device)")
            elif e.errno in (errno.EACCES, errno.EPERM):
                hint = " (permission denied: needs ownership of the node, and CAP_SYS_RAWIO for no-IOMMU groups)"
            raise wrap_oserror(e, f"open VFIO group {path}{hint}") from None

    @property
    def noiommu(self) -> bool:
        return os.path.basename(self.path).startswith("noiommu-")

    def _fd(self) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, f"group {self.path} is closed")
        return self.fd

    def status(self) -> int:
        st = uapi.vfio_group_status(argsz=ctypes.sizeof(uapi.vfio_group_status))
        uapi.ioctl(self._fd(), uapi.VFIO_GROUP_GET_STATUS, st, f"VFIO_GROUP_GET_STATUS on {self.path}")
        return st.flags

    @property
    def viable(self) -> bool:
        return bool(self.status() & uapi.VFIO_GROUP_FLAGS_VIABLE)

    @property
    def container_set(self) -> bool:
        return bool(self.status() & uapi.VFIO_GROUP_FLAGS_CONTAINER_SET)

    def set_container(self, container) -> None:
        """Attach to ``container`` (VFIO_GROUP_SET_CONTAINER); the group holds a lease on it."""
        fdbuf = ctypes.c_int32(container.fd)
        uapi.ioctl(self._fd(), uapi.VFIO_GROUP_SET_CONTAINER, fdbuf,
                   f"VFIO_GROUP_SET_CONTAINER {container.path} on {self.path}")
        self.container = container
        self._container_lease = container.lease()
        container._group_joined(self)

    def unset_container(self) -> None:
        """Leave the container (VFIO_GROUP_UNSET_CONTAINER).  When this is the container's
        last group, the container first unmaps its DMA mappings (the kernel drops the
        IOMMU context with the last group).  EBUSY while devices of the group are open."""
        self._unset()
        self._left_container()

    def _unset(self) -> None:
        if self.container is not None:
            self.container._group_leaving(self)
        uapi.ioctl(self._fd(), uapi.VFIO_GROUP_UNSET_CONTAINER, 0, f"VFIO_GROUP_UNSET_CONTAINER on {self.path}")

    def _left_container(self) -> None:
        c, lease = self.container, self._container_lease
        self.container = self._container_lease = None
        if c is not None:
            c._group_left(self)
        if lease is not None:
            lease.close()

    def get_device_fd(self, name: str) -> int:
        # a mutable buffer: with bytes, fcntl.ioctl returns a copy of the buffer, not the fd
        buf = bytearray(name.encode() + b"\0")
        return uapi.ioctl(self._fd(), uapi.VFIO_GROUP_GET_DEVICE_FD, buf,
                          f"VFIO_GROUP_GET_DEVICE_FD {name} on {self.path}")

    def open_device(self, name: str, *, dma=None, interface=None) -> Device:
        """A device of this group (VFIO_GROUP_GET_DEVICE_FD).  The device holds a lease
        on the group until it is closed; its ``group`` and ``container`` are this group
        and its container, ``dma`` and ``interface`` what the caller says (the container's
        :meth:`~vfio.container.Container.open_device` says which)."""
        fd = self.get_device_fd(name)
        backend = KernelBackend(fd, name)
        try:
            # a failed Device() closes both
            return Device(backend, owns=[self.lease()], dma=dma, interface=interface,
                          group=self, container=self.container)
        except BaseException:
            backend.close()
            raise

    def _release(self) -> None:
        if self.container is not None:
            try:
                self._unset()
            except VfioError as e:
                # EBUSY: devices of the group are still open; closing the fd detaches anyway
                if e.errno != errno.EBUSY:
                    raise

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            super().close()
        finally:
            # out of the container (after EBUSY the kernel detaches the group when its
            # last device fd closes); only now may a container made for it close
            self._left_container()

