"""iommufd and the VFIO device cdev: the newer way to own a device.

Since Linux 6.6 (``CONFIG_IOMMUFD`` + ``CONFIG_VFIO_DEVICE_CDEV``) a device bound
to vfio-pci also appears as ``/dev/vfio/devices/vfioN``.  Instead of
container + group, the user opens ``/dev/iommu`` (an iommufd), opens the cdev,
binds it to the iommufd (``VFIO_DEVICE_BIND_IOMMUFD``, giving a device id),
allocates an I/O address space (IOAS, ``IOMMU_IOAS_ALLOC``) and attaches the
device to it (``VFIO_DEVICE_ATTACH_IOMMUFD_PT``; the kernel creates a hardware
page table, HWPT, for it).  DMA mappings are made in the IOAS
(``IOMMU_IOAS_MAP``, at a fixed IOVA or one the kernel picks) and apply to
every device attached to it.  Once bound and attached, the cdev fd is an
ordinary VFIO device fd: regions, IRQs and reset work as for a group-opened
device, so :class:`vfio.device.Device` serves both.

:class:`IOAS` is a :class:`vfio.dma.DmaSpace`, like the type1
:class:`vfio.container.Container`, so DMA code does not care which is below.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass

from . import uapi
from .device import Device, Interface, KernelBackend
from .dma import DmaSpace, IoctlArgs
from .errors import InvalidValue, VfioError
from .group import SYSFS_PCI, normalize_bdf
from .sysfs import SysfsTree
from ._resource import OwnedFd, Shared

IOMMU_PATH = "/dev/iommu"
CDEV_DIR = "/dev/vfio/devices"

# the DMA primitives' constants and reusable argument structs (see IOAS._map)
_MAP = IoctlArgs(uapi.iommu_ioas_map)
_UNMAP = IoctlArgs(uapi.iommu_ioas_unmap)
_IOAS_MAP, _IOAS_UNMAP = uapi.IOMMU_IOAS_MAP, uapi.IOMMU_IOAS_UNMAP
_FIXED, _READABLE, _WRITEABLE = (uapi.IOMMU_IOAS_MAP_FIXED_IOVA, uapi.IOMMU_IOAS_MAP_READABLE,
                                 uapi.IOMMU_IOAS_MAP_WRITEABLE)


def cdev_path_of(bdf: str, sysfs: SysfsTree | str = SYSFS_PCI, devdir: str | None = None) -> str:
    """``/dev/vfio/devices/vfioN`` of a device bound to vfio-pci (kernel with
    VFIO_DEVICE_CDEV), from the ``vfio-dev/vfioN`` entry of its sysfs directory.
    ``sysfs``: a :class:`~vfio.sysfs.SysfsTree` (a live or captured system) or the
    path of a PCI devices directory; ``devdir`` defaults to the
    ``/dev/vfio/devices`` of the system it stands for.  Raises :class:`VfioError`
    (ENOENT) when the device has no cdev."""
    bdf = normalize_bdf(bdf)
    tree = SysfsTree.of(sysfs)
    rel = f"{tree.pci_device(bdf)}/vfio-dev"
    found = [n for n in tree.listdir(rel) if n.startswith("vfio")]
    if not found:
        raise VfioError(errno.ENOENT, f"VFIO cdev of {bdf}: no {tree.shown(rel)} "
                                      "(not bound to vfio-pci, or the kernel lacks CONFIG_VFIO_DEVICE_CDEV)")
    return os.path.join(devdir if devdir is not None else tree.dev("vfio/devices"), found[0])


@dataclass(frozen=True)
class HwInfo:
    """IOMMU_GET_HW_INFO: the IOMMU behind a device (type, capabilities, raw driver data)."""
    data_type: int
    capabilities: int
    max_pasid_log2: int
    data: bytes

    @property
    def vtd(self):
        if self.data_type != uapi.IOMMU_HW_INFO_TYPE_INTEL_VTD or len(self.data) < ctypes.sizeof(uapi.iommu_hw_info_vtd):
            return None
        v = uapi.iommu_hw_info_vtd.from_buffer_copy(self.data)
        return {"flags": v.flags, "cap_reg": v.cap_reg, "ecap_reg": v.ecap_reg}


class IommuFD(OwnedFd, Shared):
    """An open ``/dev/iommu``.  Closing it destroys the IOASes allocated in it."""

    def __init__(self, path: str = IOMMU_PATH):
        self.path = path
        self.fd = uapi.open_node(path, os.O_RDWR | os.O_CLOEXEC, f"open iommufd {path} (kernel needs CONFIG_IOMMUFD)")
        self._objects: list = []

    def _fd(self) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, f"iommufd {self.path} is closed")
        return self.fd

    def call(self, request: int, st: ctypes.Structure, what: str) -> ctypes.Structure:
        """An iommufd ioctl with its struct (``size`` filled in here)."""
        st.size = ctypes.sizeof(st)
        uapi.ioctl(self._fd(), request, st, f"{what} on {self.path}")
        return st

    def alloc_ioas(self) -> "IOAS":
        st = self.call(uapi.IOMMU_IOAS_ALLOC, uapi.iommu_ioas_alloc(), "IOMMU_IOAS_ALLOC")
        ioas = IOAS(self, st.out_ioas_id)
        self._objects.append(ioas)
        return ioas

    def destroy(self, obj_id: int) -> None:
        self.call(uapi.IOMMU_DESTROY, uapi.iommu_destroy(id=obj_id), f"IOMMU_DESTROY {obj_id}")

    def get_hw_info(self, dev_id: int, data_len: int = 256) -> HwInfo:
        buf = (ctypes.c_uint8 * data_len)()
        st = uapi.iommu_hw_info(dev_id=dev_id, data_len=data_len, data_uptr=ctypes.addressof(buf))
        self.call(uapi.IOMMU_GET_HW_INFO, st, f"IOMMU_GET_HW_INFO dev {dev_id}")
        return HwInfo(st.out_data_type, st.out_capabilities, st.out_max_pasid_log2, bytes(buf)[:st.data_len])

    def alloc_hwpt(self, dev_id: int, pt_id: int, flags: int = 0) -> int:
        """A hardware page table for ``dev_id`` on IOAS ``pt_id`` (no driver data: a plain paging domain)."""
        st = uapi.iommu_hwpt_alloc(flags=flags, dev_id=dev_id, pt_id=pt_id, data_type=uapi.IOMMU_HWPT_DATA_NONE)
        self.call(uapi.IOMMU_HWPT_ALLOC, st, f"IOMMU_HWPT_ALLOC dev {dev_id} pt {pt_id}")
        return st.out_hwpt_id

    def _release(self) -> None:
        # IOASes (and their mappings) go before the fd that holds them
        while self._objects:
            self._objects.pop().close()


class IOAS(DmaSpace, Shared):
    """An iommufd I/O address space.  Its mappings live as long as the IOAS, whether or
    not a device is attached; ``close()`` unmaps them and destroys it."""

    def __init__(self, iommufd: IommuFD, ioas_id: int):
        super().__init__()
        self.iommufd = iommufd
        self.id = ioas_id
        self.alignment = 0
        self._ranges: list | None = None

    def iova_ranges(self) -> list:
        """Usable IOVA ranges (inclusive).  Asked each time: attaching a device changes them."""
        n = 8
        for _ in range(6):
            arr = (uapi.iommu_iova_range * n)()
            st = uapi.iommu_ioas_iova_ranges(ioas_id=self.id, num_iovas=n, allowed_iovas=ctypes.addressof(arr))
            try:
                self.iommufd.call(uapi.IOMMU_IOAS_IOVA_RANGES, st, f"IOMMU_IOAS_IOVA_RANGES ioas {self.id}")
            except VfioError as e:
                # EMSGSIZE: more ranges than room; num_iovas says how many
                if e.errno != errno.EMSGSIZE:
                    raise
                n = max(st.num_iovas, n * 2)
                continue
            self.alignment = st.out_iova_alignment
            self._ranges = [(arr[i].start, arr[i].last) for i in range(st.num_iovas)]
            return list(self._ranges)
        raise VfioError(errno.EMSGSIZE, f"IOMMU_IOAS_IOVA_RANGES ioas {self.id}: range count kept growing")

    @property
    def min_page_size(self) -> int:
        if self._ranges is None:
            self.iova_ranges()
        return self.alignment or 4096

    # The two primitives are the hot path of DmaSpace.map/unmap: what map_raw/unmap_raw
    # do at a fixed IOVA, with a spare argument struct filled in one pack_into (a value a
    # field cannot hold is refused) and no error text unless the kernel says no (then
    # the same errno and text as theirs).
    def _map(self, vaddr: int, iova: int, size: int, readable: bool, writable: bool) -> None:
        fd = self.iommufd.fd
        if fd < 0:
            self.iommufd._fd()              # raises EBADF naming the iommufd
        flags = _FIXED | (_READABLE if readable else 0) | (_WRITEABLE if writable else 0)
        try:
            _MAP.call(fd, _IOAS_MAP, (flags, self.id, 0, vaddr, size, iova))
        except VfioError as e:
            raise VfioError(e.errno, self._dma_what("IOMMU_IOAS_MAP", iova, size)) from None

    def map_raw(self, vaddr: int, size: int, iova: int | None = None, readable: bool = True,
                writable: bool = True) -> int:
        """IOMMU_IOAS_MAP at a fixed ``iova``, or at one the kernel picks (``iova=None``); returns the IOVA.
        No bookkeeping: prefer :meth:`map`/:meth:`alloc`."""
        flags = (uapi.IOMMU_IOAS_MAP_READABLE if readable else 0) | (uapi.IOMMU_IOAS_MAP_WRITEABLE if writable else 0)
        if iova is not None:
            flags |= uapi.IOMMU_IOAS_MAP_FIXED_IOVA
        st = uapi.iommu_ioas_map(flags=flags, ioas_id=self.id, user_va=vaddr, length=size, iova=iova or 0)
        self.iommufd.call(uapi.IOMMU_IOAS_MAP, st,
                          f"IOMMU_IOAS_MAP ioas {self.id} iova {'auto' if iova is None else hex(iova)} length {size:#x}")
        return st.iova

    def _unmap(self, iova: int, size: int) -> int:
        fd = self.iommufd.fd
        if fd < 0:
            self.iommufd._fd()
        try:
            return _UNMAP.call(fd, _IOAS_UNMAP, (self.id, iova, size), "length")
        except VfioError as e:
            raise VfioError(e.errno, self._dma_what("IOMMU_IOAS_UNMAP", iova, size)) from None

    def _dma_what(self, op: str, iova: int, size: int) -> str:
        # the text map_raw/unmap_raw give (through IommuFD.call) for a fixed IOVA
        return f"{op} ioas {self.id} iova {iova:#x} length {size:#x} on {self.iommufd.path}"

    def unmap_raw(self, iova: int, size: int) -> int:
        st = uapi.iommu_ioas_unmap(ioas_id=self.id, iova=iova, length=size)
        self.iommufd.call(uapi.IOMMU_IOAS_UNMAP, st, f"IOMMU_IOAS_UNMAP ioas {self.id} iova {iova:#x} length {size:#x}")
        return st.length

    def open_device(self, bdf: str, sysfs: SysfsTree | str = SYSFS_PCI, devdir: str | None = None) -> Device:
        """Open a vfio-pci device through its cdev, bound to this IOAS's iommufd and
        attached to this IOAS: the context's device opener (the cdev path's
        ``get_device_fd``).

        The Device's ``dma`` and ``ioas`` are this IOAS, ``iommufd`` its iommufd,
        ``backend.devid`` the iommufd device id.  It holds leases on both: closing it
        closes the device fd (which detaches and unbinds it), then releases the IOAS
        (unmapping its mappings, if it was made for its devices and none is left) and
        the iommufd.  Raises :class:`VfioError` (errno kept) when the kernel refuses a
        step, ``ValueError`` for a malformed address.
        """
        bdf = normalize_bdf(bdf)
        return self.open_device_at(cdev_path_of(bdf, sysfs, devdir), bdf)

    def open_device_at(self, path: str, name: str, dt=None) -> Device:
        """Open the VFIO cdev ``path`` of device ``name`` (any bus: a platform
        device's, see :func:`vfio.platform.open_platform_device`), bound to this
        IOAS's iommufd and attached to this IOAS, as :meth:`open_device` does for a
        PCI function; ``dt`` is handed to the Device."""
        if self.id is None:
            raise VfioError(errno.EBADF, f"IOAS of {self.iommufd.path} is closed")
        iommufd = self.iommufd
        backend = CdevBackend(path, iommufd, name)
        try:
            backend.attach(self.id)
            # owns pops from the end: the IOAS goes before the iommufd it lives in
            return Device(backend, owns=[iommufd.lease(), self.lease()], dma=self,
                          interface=Interface.CDEV, ioas=self, iommufd=iommufd, dt=dt)
        except BaseException:
            backend.close()
            raise

    def close(self) -> None:
        if self.id is None:
            return
        try:
            self.unmap_all()
        finally:
            obj, self.id = self.id, None
            if self.iommufd.fd >= 0:
                self.iommufd.destroy(obj)
            if self in self.iommufd._objects:
                self.iommufd._objects.remove(self)


class CdevBackend(KernelBackend):
    """A device fd opened from its cdev, bound to an iommufd; unbinds by closing."""

    def __init__(self, path: str, iommufd: IommuFD, name: str):
        fd = uapi.open_node(path, os.O_RDWR | os.O_CLOEXEC, f"open VFIO cdev {path} of {name}")
        super().__init__(fd, name)
        self.path = path
        self.iommufd = iommufd
        self.attached: int | None = None
        try:
            st = uapi.vfio_device_bind_iommufd(argsz=ctypes.sizeof(uapi.vfio_device_bind_iommufd),
                                               iommufd=iommufd.fd)
            uapi.ioctl(fd, uapi.VFIO_DEVICE_BIND_IOMMUFD, st, f"VFIO_DEVICE_BIND_IOMMUFD {path} of {name}")
            self.devid = st.out_devid
        except BaseException:
            self.close()
            raise

    def attach(self, pt_id: int) -> int:
        """Attach to an IOAS (or HWPT) ``pt_id``; returns the HWPT id the kernel used."""
        st = uapi.vfio_device_attach_iommufd_pt(argsz=ctypes.sizeof(uapi.vfio_device_attach_iommufd_pt), pt_id=pt_id)
        uapi.ioctl(self._fd("attach"), uapi.VFIO_DEVICE_ATTACH_IOMMUFD_PT, st,
                   f"VFIO_DEVICE_ATTACH_IOMMUFD_PT {pt_id} on {self.name}")
        self.attached = st.pt_id
        return st.pt_id

    def detach(self) -> None:
        st = uapi.vfio_device_detach_iommufd_pt(argsz=ctypes.sizeof(uapi.vfio_device_detach_iommufd_pt))
        uapi.ioctl(self._fd("detach"), uapi.VFIO_DEVICE_DETACH_IOMMUFD_PT, st,
                   f"VFIO_DEVICE_DETACH_IOMMUFD_PT on {self.name}")
        self.attached = None


def open_cdev_device(bdf: str, iommufd: IommuFD | None = None, ioas: IOAS | None = None,
                     sysfs: SysfsTree | str = SYSFS_PCI, devdir: str | None = None) -> Device:
    """Open a vfio-pci device through its cdev (:meth:`IOAS.open_device`), bound to
    ``iommufd`` and attached to ``ioas`` (both created when not given; a given
    ``ioas`` brings its own iommufd).

    An IOAS or iommufd created here belongs to the device's leases: closing the
    device closes them when no other device holds them.  An ``iommufd`` or ``ioas``
    passed in stays the caller's to close.  Raises ``ValueError`` when ``ioas`` does
    not live in the given ``iommufd``.
    """
    bdf = normalize_bdf(bdf)
    return open_cdev_node(cdev_path_of(bdf, sysfs, devdir), bdf, iommufd, ioas)


def open_cdev_node(path: str, name: str, iommufd: IommuFD | None = None, ioas: IOAS | None = None,
                   dt=None) -> Device:
    """Open the VFIO device whose cdev is ``path`` (``/dev/vfio/devices/vfioN``), named
    ``name`` (e.g. a mediated device's UUID; :meth:`IOAS.open_device_at`), with the
    iommufd and IOAS created when not given, owned as in :func:`open_cdev_device`;
    ``dt``: a platform device's device-tree origins, handed to the Device."""
    if ioas is not None:
        if iommufd is not None and ioas.iommufd is not iommufd:
            raise InvalidValue(f"IOAS {ioas.id} lives in another iommufd than {iommufd.path}")
        return ioas.open_device_at(path, name, dt=dt)
    held = []       # released last to first; the device takes its own leases on success
    try:
        if iommufd is None:
            iommufd = IommuFD()
            held.append(iommufd.lease(adopt=True))
        ioas = iommufd.alloc_ioas()
        held.append(ioas.lease(adopt=True))
        return ioas.open_device_at(path, name, dt=dt)
    finally:
        while held:
            held.pop().close()
