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

from typing import TYPE_CHECKING

from . import uapi
from .errors import VfioError
from .sysfs import PCI_DEVICES, HostError, SysfsTree
from ._resource import OwnedFd, Shared

VFIO_DEV_DIR = "/dev/vfio"
SYSFS_PCI = "/" + PCI_DEVICES

#: Why opening a group node failed, by errno (the kernel's answer alone does not say).
_OPEN_HINTS = {
    errno.EBUSY: (" (already open: a group may be opened once at a time; to open another device "
                  "of an open group, pass container=<the first device>.container to "
                  "vfio.open_pci_device, or use <the first device>.group.open_device)"),
    errno.EACCES: " (permission denied: needs ownership of the node, and CAP_SYS_RAWIO for no-IOMMU groups)",
}
_OPEN_HINTS[errno.EPERM] = _OPEN_HINTS[errno.EACCES]

if TYPE_CHECKING:
    from .device import Device


from .address import normalize_bdf  # noqa: E402,F401  (its home; re-exported here as before)


def iommu_group_of(bdf: str, sysfs: SysfsTree | str = SYSFS_PCI) -> str:
    """The IOMMU group name of a PCI device ('7', or e.g. '0' for noiommu-0), from its
    ``iommu_group`` link.  ``sysfs``: a :class:`~vfio.sysfs.SysfsTree` (a live or
    captured system) or the path of a PCI devices directory.  Raises
    :class:`VfioError`: ENODEV when there is no such device, the errno of the
    failed read (ENOENT: no link) when it has no group."""
    bdf = normalize_bdf(bdf)
    tree = SysfsTree.of(sysfs)
    ddir = tree.pci_device(bdf)
    if not tree.exists(ddir):
        raise VfioError(errno.ENODEV, f"PCI device {bdf}: no {tree.shown(ddir)}")
    link = f"{ddir}/iommu_group"
    try:
        name = tree.link_name(link)
        err = errno.ENOENT
    except (VfioError, HostError) as e:
        name, err = None, e.errno or errno.EIO
    if name is None:
        raise VfioError(err, f"IOMMU group of {bdf} ({tree.shown(link)}): device has no IOMMU group "
                             "(no IOMMU, or not enabled on the kernel command line)")
    return name


def group_path_of(bdf: str, sysfs: SysfsTree | str = SYSFS_PCI, devdir: str | None = None) -> str:
    """The /dev/vfio node of a device's group: N, or noiommu-N in no-IOMMU mode.
    ``devdir`` defaults to the ``/dev/vfio`` of the system ``sysfs`` stands for."""
    tree = SysfsTree.of(sysfs)
    if devdir is None:
        devdir = tree.dev("vfio")
    g = iommu_group_of(bdf, tree)
    for name in (g, f"noiommu-{g}"):
        p = os.path.join(devdir, name)
        if os.path.exists(p):
            return p
    raise VfioError(errno.ENOENT, f"group {g} of {normalize_bdf(bdf)}: no {os.path.join(devdir, g)} "
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
        self.fd = uapi.open_node(path, os.O_RDWR | os.O_CLOEXEC, f"open VFIO group {path}", _OPEN_HINTS)

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

    def open_device(self, name: str, *, dma=None, interface=None, dt=None) -> Device:
        """A device of this group (VFIO_GROUP_GET_DEVICE_FD).  The device holds a lease
        on the group until it is closed; its ``group`` and ``container`` are this group
        and its container, ``dma`` and ``interface`` what the caller says (the container's
        :meth:`~vfio.container.Container.open_device` says which), ``dt`` its device-tree
        origins (:func:`vfio.platform.open_platform_device` gives them)."""
        # imported here, not at the top: vfio-inspect's listing asks groups only for their
        # status, and the device model is a third of the fd layer's import time
        from .device import Device, KernelBackend
        fd = self.get_device_fd(name)
        backend = KernelBackend(fd, name)
        try:
            # a failed Device() closes both
            return Device(backend, owns=[self.lease()], dma=dma, interface=interface,
                          group=self, container=self.container, dt=dt)
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

