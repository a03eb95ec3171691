"""The VFIO container: ``/dev/vfio/vfio``, the legacy IOMMU context.

Groups (``/dev/vfio/N``) are attached to a container; once the first group is
in, the user picks an IOMMU model with ``VFIO_SET_IOMMU`` (type1v2 on x86) and
can then map memory for DMA, which applies to every device of every group in
the container.  ``VFIO_IOMMU_GET_INFO`` reports the supported IOMMU page sizes
and, in a capability chain, the usable IOVA ranges and how many more DMA
mappings the kernel allows.

No-IOMMU mode (``vfio.enable_unsafe_noiommu_mode=1``, groups named
``/dev/vfio/noiommu-N``) gives device access with *no* DMA isolation: the
device can write anywhere in host memory.  The container then offers only the
``VFIO_NOIOMMU_IOMMU`` model, has no IOVA space, and this class refuses DMA
mapping calls there with :class:`vfio.errors.UnsafeOperationError` and warns
with :class:`NoIommuWarning` when the mode is selected.
"""

from __future__ import annotations

import ctypes
import errno
import os
import warnings
from dataclasses import dataclass

from . import uapi
from .device import Interface
from .dma import DmaSpace, IoctlArgs
from .errors import UnsafeOperationError, VfioError
from .group import Group, group_path_of, normalize_bdf
from ._resource import OwnedFd, Shared

CONTAINER_PATH = "/dev/vfio/vfio"

# the DMA primitives' constants and reusable argument structs (see Container._map)
_MAP = IoctlArgs(uapi.vfio_iommu_type1_dma_map)
_UNMAP = IoctlArgs(uapi.vfio_iommu_type1_dma_unmap)
_MAP_DMA, _UNMAP_DMA = uapi.VFIO_IOMMU_MAP_DMA, uapi.VFIO_IOMMU_UNMAP_DMA
_READ, _WRITE, _NOIOMMU = uapi.VFIO_DMA_MAP_FLAG_READ, uapi.VFIO_DMA_MAP_FLAG_WRITE, uapi.VFIO_NOIOMMU_IOMMU


class NoIommuWarning(UserWarning):
    """A container is in no-IOMMU mode: devices in it can DMA anywhere in host memory."""


@dataclass(frozen=True)
class IommuInfo:
    flags: int
    iova_pgsizes: int
    iova_ranges: tuple          # inclusive (start, end) pairs
    dma_avail: int | None
    migration: dict | None
    raw: bytes = b""

    @property
    def min_page_size(self) -> int:
        return self.iova_pgsizes & -self.iova_pgsizes if self.iova_pgsizes else 0


class Container(OwnedFd, DmaSpace, Shared):
    """An open ``/dev/vfio/vfio``.  A DMA space once an IOMMU model is set.

    The kernel keeps a container's IOMMU context only while a group is attached:
    when the last group leaves (``VFIO_GROUP_UNSET_CONTAINER`` or closing the
    group), type1 drops the IOMMU model and every DMA mapping with it.  So before
    its last group leaves, the container unmaps what was mapped through it (the
    :class:`vfio.dma.DmaMapping` objects then report ``mapped == False`` and
    buffers that :meth:`alloc` made are freed) and goes back to "no IOMMU model
    set": a new group can join and :meth:`set_iommu` be called again.

    Every attached group holds a lease on the container (:class:`vfio.Group`);
    a container :func:`vfio.open_pci_device` created closes when its last group
    leaves, one the caller opened stays open until the caller closes it.
    """

    def __init__(self, path: str = CONTAINER_PATH):
        super().__init__()
        self.path = path
        self.iommu_type: int | None = None
        self.groups: list = []
        self._info: IommuInfo | None = None
        self.fd = uapi.open_node(path, os.O_RDWR | os.O_CLOEXEC, f"open VFIO container {path}")
        try:
            v = uapi.ioctl(self.fd, uapi.VFIO_GET_API_VERSION, 0, f"VFIO_GET_API_VERSION on {path}")
            if v != uapi.VFIO_API_VERSION:
                raise VfioError(errno.EPROTO, f"{path}: VFIO API version {v}, this toolkit speaks {uapi.VFIO_API_VERSION}")
        except BaseException:
            os.close(self.fd)
            raise

    def _what(self, op: str) -> str:
        return f"{op} on container {self.path}"

    def _fd(self) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, self._what("use") + ": closed")
        return self.fd

    def check_extension(self, ext: int) -> int:
        return uapi.ioctl(self._fd(), uapi.VFIO_CHECK_EXTENSION, ext, self._what(f"VFIO_CHECK_EXTENSION {ext}"))

    def extensions(self) -> dict:
        """The IOMMU types and container features the kernel offers (CHECK_EXTENSION
        of each).  DMA coherency is a property of the attached domain, not an
        offer: ask :meth:`dma_coherent` once a group is in."""
        names = {"TYPE1": uapi.VFIO_TYPE1_IOMMU, "SPAPR_TCE": uapi.VFIO_SPAPR_TCE_IOMMU,
                 "TYPE1v2": uapi.VFIO_TYPE1v2_IOMMU, "EEH": uapi.VFIO_EEH, "TYPE1_NESTING": uapi.VFIO_TYPE1_NESTING_IOMMU,
                 "SPAPR_TCE_v2": uapi.VFIO_SPAPR_TCE_v2_IOMMU, "NOIOMMU": uapi.VFIO_NOIOMMU_IOMMU,
                 "UNMAP_ALL": uapi.VFIO_UNMAP_ALL, "UPDATE_VADDR": uapi.VFIO_UPDATE_VADDR}
        return {n: self.check_extension(v) for n, v in names.items()}

    def dma_coherent(self) -> bool:
        """CHECK_EXTENSION(VFIO_DMA_CC_IOMMU): whether the IOMMU enforces cache-coherent
        DMA.  iommufd's container emulation answers ENODEV before an IOMMU is set."""
        return bool(self.check_extension(uapi.VFIO_DMA_CC_IOMMU))

    def set_iommu(self, iommu_type: int | None = None) -> int:
        """Select the IOMMU model (needs a group attached).  Default: type1v2, or
        no-IOMMU when that is all the container offers (with a :class:`NoIommuWarning`)."""
        if iommu_type is None:
            if self.check_extension(uapi.VFIO_TYPE1v2_IOMMU):
                iommu_type = uapi.VFIO_TYPE1v2_IOMMU
            elif self.check_extension(uapi.VFIO_NOIOMMU_IOMMU):
                iommu_type = uapi.VFIO_NOIOMMU_IOMMU
            else:
                raise VfioError(errno.ENODEV, self._what("VFIO_SET_IOMMU") + ": neither type1v2 nor no-IOMMU offered")
        uapi.ioctl(self._fd(), uapi.VFIO_SET_IOMMU, iommu_type, self._what(f"VFIO_SET_IOMMU {iommu_type}"))
        self.iommu_type = iommu_type
        if iommu_type == uapi.VFIO_NOIOMMU_IOMMU:
            warnings.warn(f"{self.path} is in no-IOMMU mode: devices in it can DMA anywhere in host "
                          "memory, unchecked; use only for trusted devices", NoIommuWarning, stacklevel=2)
        return iommu_type

    @property
    def noiommu(self) -> bool:
        return self.iommu_type == uapi.VFIO_NOIOMMU_IOMMU

    def _require_iommu(self, op: str) -> None:
        if self.iommu_type is None:
            raise VfioError(errno.EINVAL, self._what(op) + ": no IOMMU model set (call set_iommu first)")
        if self.noiommu:
            raise UnsafeOperationError(self._what(op) + ": no-IOMMU container has no IOVA space; "
                                       "a device there DMAs to physical addresses, which this toolkit does not map")

    # ---- IOMMU info ------------------------------------------------------------------
    def iommu_info(self) -> IommuInfo:
        self._require_iommu("VFIO_IOMMU_GET_INFO")
        what = self._what("VFIO_IOMMU_GET_INFO")

        def call(argsz: int) -> bytearray:
            buf = uapi.info_buffer(uapi.vfio_iommu_type1_info, argsz)
            uapi.ioctl(self._fd(), uapi.VFIO_IOMMU_GET_INFO, buf, what)
            return buf
        buf = uapi.variable_info(call, uapi.vfio_iommu_type1_info, what)
        hdr = uapi.vfio_iommu_type1_info.from_buffer_copy(buf)
        ranges, avail, mig = [], None, None
        if hdr.flags & uapi.VFIO_IOMMU_INFO_CAPS and hdr.cap_offset:
            for c in uapi.iter_caps(buf, hdr.cap_offset, what, ctypes.sizeof(uapi.vfio_iommu_type1_info)):
                if c.id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE:
                    uapi.check_cap_size(c, uapi.vfio_iommu_type1_info_cap_iova_range, what)
                    cap = uapi.vfio_iommu_type1_info_cap_iova_range.from_buffer_copy(c.data)
                    base = ctypes.sizeof(cap)
                    rsz = ctypes.sizeof(uapi.vfio_iova_range)
                    if base + cap.nr_iovas * rsz > len(c.data):
                        raise VfioError(errno.EPROTO, f"{what}: {cap.nr_iovas} IOVA ranges overrun the capability")
                    for i in range(cap.nr_iovas):
                        r = uapi.vfio_iova_range.from_buffer_copy(c.data, base + i * rsz)
                        ranges.append((r.start, r.end))
                elif c.id == uapi.VFIO_IOMMU_TYPE1_INFO_DMA_AVAIL:
                    uapi.check_cap_size(c, uapi.vfio_iommu_type1_info_dma_avail, what)
                    avail = uapi.vfio_iommu_type1_info_dma_avail.from_buffer_copy(c.data).avail
                elif c.id == uapi.VFIO_IOMMU_TYPE1_INFO_CAP_MIGRATION:
                    uapi.check_cap_size(c, uapi.vfio_iommu_type1_info_cap_migration, what)
                    m = uapi.vfio_iommu_type1_info_cap_migration.from_buffer_copy(c.data)
                    mig = {"flags": m.flags, "pgsize_bitmap": m.pgsize_bitmap,
                           "max_dirty_bitmap_size": m.max_dirty_bitmap_size}
        if not ranges:      # kernels before 5.4 report none: the whole 64-bit space
            ranges = [(0, (1 << 64) - 1)]
        self._info = IommuInfo(hdr.flags, hdr.iova_pgsizes, tuple(ranges), avail, mig, bytes(buf))
        return self._info

    # ---- DmaSpace primitives -----------------------------------------------------------
    def iova_ranges(self) -> list:
        # asked afresh: the ranges shrink as devices attach (iommufd's container emulation
        # attaches a device only when its fd is opened); the allocator takes them at first use
        return list(self.iommu_info().iova_ranges)

    @property
    def min_page_size(self) -> int:
        return (self._info or self.iommu_info()).min_page_size or 4096

    # The two primitives are the hot path of DmaSpace.map/unmap: a spare argument struct
    # filled in one pack_into (a value a field cannot hold is refused), no error text
    # unless the kernel says no.
    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        t = self.iommu_type
        if t is None or t == _NOIOMMU:
            self._require_iommu("VFIO_IOMMU_MAP_DMA")
        fd = self.fd
        if fd < 0:
            self._fd()                      # raises EBADF naming the container
        try:
            _MAP.call(fd, _MAP_DMA, ((_READ if readable else 0) | (_WRITE if writable else 0), vaddr, iova, size))
        except VfioError as e:
            raise VfioError(e.errno, self._dma_what("VFIO_IOMMU_MAP_DMA", iova, size)) from None

    def _unmap(self, iova: int, size: int) -> int:
        t = self.iommu_type
        if t is None or t == _NOIOMMU:
            self._require_iommu("VFIO_IOMMU_UNMAP_DMA")
        fd = self.fd
        if fd < 0:
            self._fd()
        try:
            return _UNMAP.call(fd, _UNMAP_DMA, (0, iova, size), "size")
        except VfioError as e:
            raise VfioError(e.errno, self._dma_what("VFIO_IOMMU_UNMAP_DMA", iova, size)) from None

    def _dma_what(self, op: str, iova: int, size: int) -> str:
        return self._what(f"{op} iova {iova:#x} size {size:#x}")

    def map_dma(self, vaddr: int, iova: int, size: int, readable: bool = True, writable: bool = True) -> None:
        """Raw MAP_DMA of caller-owned memory (no bookkeeping); prefer :meth:`map`/:meth:`alloc`."""
        self._map(vaddr, iova, size, readable, writable)

    def unmap_dma(self, iova: int, size: int) -> int:
        """Raw UNMAP_DMA; returns the number of bytes the kernel unmapped."""
        return self._unmap(iova, size)

    # ---- groups ----------------------------------------------------------------------
    def open_device(self, name: str, group_path: str | None = None, **device):
        """Open a device of a group bound to VFIO in this container: the context's
        device opener (the container path's ``get_device_fd``).

        ``name`` is a PCI address (normalized; without ``group_path`` its group is
        found from sysfs), or, with ``group_path``, whatever name the group knows its
        device by: a mediated device's UUID, a platform device's name
        (:func:`vfio.open_mdev_device`, :func:`vfio.open_platform_device`).
        ``device``: keywords handed on to :meth:`vfio.group.Group.open_device`
        (a platform device's ``dt`` origins).

        Finds the device's group in the container, or opens it (``group_path``, by
        default its ``/dev/vfio`` node from sysfs) and adds it; sets the IOMMU model
        (type1v2, or no-IOMMU) if none is set yet; then opens the device through the
        group.  The Device gets this container as its ``dma`` (None in no-IOMMU mode)
        and holds a lease on the group, which holds one on the container: a group
        opened here leaves the container and closes with its last device.

        Raises :class:`VfioError` (errno kept) when the kernel refuses a step (EBUSY:
        the group is open elsewhere), ``ValueError`` for a malformed address.
        """
        if group_path is None:
            name = normalize_bdf(name)
            path = group_path_of(name)
        else:
            path = group_path
            try:
                name = normalize_bdf(name)
            except ValueError:
                pass        # not a PCI address: an mdev's UUID, a platform device's name
        held = []       # a lease on a group opened here, released once the device holds its own
        try:
            group = self.group_for(path)
            if group is None:
                group = Group(path)
                held.append(group.lease(adopt=True))
                self.add_group(group)
            if self.iommu_type is None:
                self.set_iommu()
            if self.noiommu:
                return group.open_device(name, dma=None, interface=Interface.NOIOMMU, **device)
            return group.open_device(name, dma=self, interface=Interface.CONTAINER, **device)
        finally:
            while held:
                held.pop().close()

    def add_group(self, group) -> None:
        """Attach ``group`` (VFIO_GROUP_SET_CONTAINER); it is then listed in ``groups``."""
        group.set_container(self)

    def group_for(self, path: str):
        """The open group of this container whose node is ``path``, or None."""
        real = os.path.realpath(path)
        for g in self.groups:
            if g.fd >= 0 and os.path.realpath(g.path) == real:
                return g
        return None

    def _group_joined(self, group) -> None:
        # called by Group.set_container once the kernel said yes
        self.groups.append(group)

    def _group_leaving(self, group) -> None:
        # called by Group.unset_container before the ioctl: the last group's leaving
        # tears the kernel's IOMMU context down, so unmap while it still exists
        if self.groups == [group] and self.fd >= 0 and self.iommu_type is not None and not self.noiommu:
            self.unmap_all()

    def _group_left(self, group) -> None:
        # called by Group once it is out of the container (or its fd is closed)
        if group in self.groups:
            self.groups.remove(group)
        if not self.groups:
            # the kernel released the IOMMU model with the last group (type1 and no-IOMMU)
            self.iommu_type = None
            self._info = None
            self._allocator = None

    # ---- lifetime --------------------------------------------------------------------
    def _release(self) -> None:
        """``close()`` unmaps every mapping made through the container, then closes its
        fd.  Groups still attached (open devices) keep the kernel's container alive,
        without mappings; close the devices first."""
        if self.iommu_type is not None and not self.noiommu:
            self.unmap_all()

