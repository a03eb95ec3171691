"""Dirty page tracking: which pages of a DMA space a device wrote, for live migration.

While a VMM copies guest memory to the destination, devices keep writing to it
by DMA; the pages they wrote must be copied again.  The kernel offers three
ways to learn which, and this module puts them behind one interface,
:class:`DirtyTracker` (``start``, ``stop``, ``bitmap(iova, length)`` which reads
*and clears* the bits, as every mechanism does):

* ``TYPE1`` -- the type1 container's ``VFIO_IOMMU_DIRTY_PAGES`` (START, STOP,
  GET_BITMAP), offered when ``VFIO_IOMMU_GET_INFO`` has the migration
  capability (its page sizes and the largest bitmap).  type1 has no hardware
  dirty bits: pages a device pins and writes through the kernel (an mdev's
  ``vfio_pin_pages``/``vfio_dma_rw``) are tracked exactly, but while the
  container holds a group whose device DMAs through the IOMMU directly (any
  vfio-pci device), *every* page of every mapping is reported dirty -- the
  only answer that never misses a write.  iommufd's container emulation does
  not implement it (ENOTTY).
* ``IOMMUFD_HWPT`` -- a hardware page table allocated with
  ``IOMMU_HWPT_ALLOC_DIRTY_TRACKING`` (the device is attached to it), switched
  on with ``IOMMU_HWPT_SET_DIRTY_TRACKING`` and read with
  ``IOMMU_HWPT_GET_DIRTY_BITMAP``: the IOMMU's own dirty bits (Intel VT-d
  second-stage A/D, SMMUv3 HTTU, AMD).  ``IOMMU_GET_HW_INFO`` says whether the
  IOMMU has them (``IOMMU_HW_CAP_DIRTY_TRACKING``).
* ``DEVICE`` -- the device tracks its own DMA (``VFIO_DEVICE_FEATURE_DMA_LOGGING_START``
  with the IOVA ranges to watch, ``_REPORT``, ``_STOP``): variant drivers such
  as mlx5 and pds offer it.

A mechanism the kernel, IOMMU or device does not offer raises
:class:`DirtyTrackingUnsupported` (a :class:`~vfio.errors.VfioError`: the
kernel's errno kept, ``mechanism`` says which) -- never a crash or a silent
"nothing dirty".  :func:`open_dirty_tracker` picks one as QEMU does: the
device's own logging when offered, else the IOMMU's.
"""

from __future__ import annotations

import ctypes
import enum
import errno
from dataclasses import dataclass
from typing import Iterable, Sequence

from . import uapi
from .errors import InvalidValue, VfioError
from ._resource import Resource

__all__ = ["DirtyMechanism", "DirtyTrackingUnsupported", "DirtyBitmap", "DirtyTracker", "Type1DirtyTracker",
           "HwptDirtyTracker", "DeviceDirtyTracker", "open_dirty_tracker"]


class DirtyMechanism(enum.Enum):
    TYPE1 = "type1"
    IOMMUFD_HWPT = "iommufd-hwpt"
    DEVICE = "device-dma-logging"


class DirtyTrackingUnsupported(VfioError):
    """A dirty-tracking mechanism this kernel, IOMMU or device does not offer.  ``errno``
    is the kernel's answer (ENOTTY: no such ioctl or feature; EOPNOTSUPP: the IOMMU has
    no dirty bits); ``mechanism`` is the :class:`DirtyMechanism` asked for."""

    def __init__(self, err: int, mechanism: DirtyMechanism, what: str):
        super().__init__(err, f"{mechanism.value} dirty tracking not supported: {what}")
        self.mechanism = mechanism


_UNSUPPORTED_ERRNOS = (errno.ENOTTY, errno.EOPNOTSUPP, errno.ENODEV)


@dataclass(frozen=True)
class DirtyBitmap:
    """One answer: bit *n* (little-endian u64 words) is the page at ``iova + n * page_size``."""
    iova: int
    length: int
    page_size: int
    bits: bytes

    @property
    def pages(self) -> int:
        return self.length // self.page_size

    def is_dirty(self, iova: int) -> bool:
        if not self.iova <= iova < self.iova + self.length:
            raise InvalidValue(f"IOVA {iova:#x} is outside the bitmap's {self.iova:#x}+{self.length:#x}")
        n = (iova - self.iova) // self.page_size
        return bool(self.bits[n // 8] >> (n % 8) & 1)

    def dirty(self) -> list:
        """The IOVAs of the dirty pages, ascending."""
        out = []
        for i, byte in enumerate(self.bits):
            if byte:
                for b in range(8):
                    n = i * 8 + b
                    if byte >> b & 1 and n < self.pages:
                        out.append(self.iova + n * self.page_size)
        return out


def _bitmap_buffer(length: int, page_size: int):
    nbits = length // page_size
    nbytes = (nbits + 63) // 64 * 8          # whole u64 words, as every mechanism writes them
    return (ctypes.c_uint8 * max(nbytes, 8))(), nbytes


def _check_range(iova: int, length: int, page_size: int, what: str) -> None:
    if length <= 0 or iova < 0 or iova % page_size or length % page_size:
        raise InvalidValue(f"{what}: IOVA {iova:#x} length {length:#x} must be positive multiples of the "
                           f"{page_size:#x}-byte tracking page")
    if iova + length > 1 << 64:
        raise InvalidValue(f"{what}: IOVA {iova:#x} + length {length:#x} overflows 64 bits")


class DirtyTracker(Resource):
    """The one interface.  Accessors: :attr:`mechanism`, :attr:`page_size`,
    :attr:`tracking`; commands: :meth:`start`, :meth:`stop`, :meth:`bitmap` (reads and
    clears), :meth:`close` (stops, and undoes what the tracker set up)."""

    mechanism: DirtyMechanism
    page_size: int = 4096
    tracking: bool = False

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def bitmap(self, iova: int, length: int) -> DirtyBitmap:
        raise NotImplementedError

    def _unsupported(self, e: VfioError, what: str):
        if e.errno in _UNSUPPORTED_ERRNOS:
            return DirtyTrackingUnsupported(e.errno, self.mechanism, f"{what} ({e.strerror})")
        return e

    def close(self) -> None:
        if self.tracking:
            self.stop()


# ---------------------------------------------------------------------------------------
# type1
# ---------------------------------------------------------------------------------------
class Type1DirtyTracker(DirtyTracker):
    """``VFIO_IOMMU_DIRTY_PAGES`` on a type1 container (see the module docstring for what
    type1 can know).  Raises :class:`DirtyTrackingUnsupported` when the container's
    GET_INFO has no migration capability (iommufd's container emulation, no-IOMMU)."""

    mechanism = DirtyMechanism.TYPE1

    def __init__(self, container):
        self.container = container
        what = f"VFIO_IOMMU_DIRTY_PAGES on container {container.path}"
        if container.noiommu:
            raise DirtyTrackingUnsupported(errno.EPERM, self.mechanism, f"{what}: a no-IOMMU container has no "
                                                                        "IOVA space to track")
        info = container.iommu_info()
        if info.migration is None:
            raise DirtyTrackingUnsupported(errno.ENOTTY, self.mechanism,
                                           f"{what}: VFIO_IOMMU_GET_INFO has no migration capability "
                                           "(the container is not served by vfio_iommu_type1)")
        pg = info.migration["pgsize_bitmap"]
        self.page_size = pg & -pg
        self.max_bitmap_bytes = info.migration["max_dirty_bitmap_size"]
        self.tracking = False

    def _call(self, flags: int, tail: bytes = b"", what: str = "") -> None:
        hdr = uapi.vfio_iommu_type1_dirty_bitmap(ctypes.sizeof(uapi.vfio_iommu_type1_dirty_bitmap) + len(tail), flags)
        buf = bytearray(bytes(hdr) + tail)
        uapi.ioctl(self.container._fd(), uapi.VFIO_IOMMU_DIRTY_PAGES, buf,
                   f"VFIO_IOMMU_DIRTY_PAGES {what} on container {self.container.path}")

    def start(self) -> None:
        """START: from now on the kernel keeps a bitmap per mapping."""
        try:
            self._call(uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_START, what="START")
        except VfioError as e:
            raise self._unsupported(e, "START") from None
        self.tracking = True

    def stop(self) -> None:
        self._call(uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_STOP, what="STOP")
        self.tracking = False

    def bitmap(self, iova: int, length: int) -> DirtyBitmap:
        """GET_BITMAP of ``iova``..``iova+length`` (whole mappings only: type1 refuses a range
        that cuts one, EINVAL).  Raises :class:`InvalidValue` for a misaligned range or a
        bitmap over the kernel's ``max_dirty_bitmap_size``."""
        what = f"VFIO_IOMMU_DIRTY_PAGES GET_BITMAP iova {iova:#x} size {length:#x}"
        _check_range(iova, length, self.page_size, what)
        data, nbytes = _bitmap_buffer(length, self.page_size)
        if nbytes > self.max_bitmap_bytes:
            raise InvalidValue(f"{what}: a {nbytes}-byte bitmap is over the kernel's {self.max_bitmap_bytes}")
        get = uapi.vfio_iommu_type1_dirty_bitmap_get(iova=iova, size=length)
        get.bitmap.pgsize = self.page_size
        get.bitmap.size = nbytes
        get.bitmap.data = ctypes.addressof(data)
        self._call(uapi.VFIO_IOMMU_DIRTY_PAGES_FLAG_GET_BITMAP, bytes(get), f"GET_BITMAP iova {iova:#x} size {length:#x}")
        return DirtyBitmap(iova, length, self.page_size, bytes(data)[:nbytes])


# ---------------------------------------------------------------------------------------
# iommufd HWPT
# ---------------------------------------------------------------------------------------
class HwptDirtyTracker(DirtyTracker):
    """The IOMMU's dirty bits through iommufd, for a device opened on the cdev path: a HWPT
    allocated with ``IOMMU_HWPT_ALLOC_DIRTY_TRACKING`` on the device's IOAS, the device
    attached to it (its mappings stay: they live in the IOAS); :meth:`close` attaches
    the device back to the IOAS and destroys the HWPT.

    Raises :class:`DirtyTrackingUnsupported` with the kernel's errno when the IOMMU
    cannot (EOPNOTSUPP from HWPT_ALLOC), ``VfioError`` EINVAL for a device not opened
    through a cdev."""

    mechanism = DirtyMechanism.IOMMUFD_HWPT

    def __init__(self, device, page_size: int = 4096):
        backend = device.backend
        if getattr(device, "ioas", None) is None or not hasattr(backend, "devid"):
            raise DirtyTrackingUnsupported(errno.ENOTTY, self.mechanism,
                                           f"{device.name} was not opened through a VFIO cdev and iommufd")
        self.device, self.iommufd, self.ioas = device, device.iommufd, device.ioas
        self.page_size = page_size
        self.tracking = False
        self.hwpt_id: int | None = None
        devid = backend.devid
        try:
            self.hw_capabilities = self.iommufd.get_hw_info(devid).capabilities
        except VfioError:
            self.hw_capabilities = None
        try:
            self.hwpt_id = self.iommufd.alloc_hwpt(devid, self.ioas.id, uapi.IOMMU_HWPT_ALLOC_DIRTY_TRACKING)
        except VfioError as e:
            caps = "unknown" if self.hw_capabilities is None else f"{self.hw_capabilities:#x}"
            raise self._unsupported(e, f"IOMMU_HWPT_ALLOC with DIRTY_TRACKING for {device.name} "
                                       f"(IOMMU_GET_HW_INFO capabilities {caps})") from None
        try:
            backend.attach(self.hwpt_id)
        except BaseException:
            self._destroy()
            raise

    def _destroy(self) -> None:
        hwpt, self.hwpt_id = self.hwpt_id, None
        if hwpt is not None and self.iommufd.fd >= 0:
            self.iommufd.destroy(hwpt)

    def _set(self, on: bool) -> None:
        st = uapi.iommu_hwpt_set_dirty_tracking(flags=uapi.IOMMU_HWPT_DIRTY_TRACKING_ENABLE if on else 0,
                                                hwpt_id=self.hwpt_id)
        self.iommufd.call(uapi.IOMMU_HWPT_SET_DIRTY_TRACKING, st,
                          f"IOMMU_HWPT_SET_DIRTY_TRACKING {'on' if on else 'off'} hwpt {self.hwpt_id}")

    def start(self) -> None:
        self._set(True)
        self.tracking = True

    def stop(self) -> None:
        self._set(False)
        self.tracking = False

    def bitmap(self, iova: int, length: int) -> DirtyBitmap:
        what = f"IOMMU_HWPT_GET_DIRTY_BITMAP hwpt {self.hwpt_id} iova {iova:#x} length {length:#x}"
        _check_range(iova, length, self.page_size, what)
        data, nbytes = _bitmap_buffer(length, self.page_size)
        st = uapi.iommu_hwpt_get_dirty_bitmap(hwpt_id=self.hwpt_id, iova=iova, length=length,
                                              page_size=self.page_size, data=ctypes.addressof(data))
        self.iommufd.call(uapi.IOMMU_HWPT_GET_DIRTY_BITMAP, st, what)
        return DirtyBitmap(iova, length, self.page_size, bytes(data)[:nbytes])

    def close(self) -> None:
        try:
            super().close()
        finally:
            if self.hwpt_id is not None:
                try:
                    if not self.device.closed:
                        self.device.backend.attach(self.ioas.id)
                finally:
                    self._destroy()


# ---------------------------------------------------------------------------------------
# the device's own DMA logging
# ---------------------------------------------------------------------------------------
class DeviceDirtyTracker(DirtyTracker):
    """``VFIO_DEVICE_FEATURE_DMA_LOGGING_*``: the device logs its own DMA writes in the
    ``ranges`` ((iova, length) pairs, page-aligned, not overlapping) given at start.
    Raises :class:`DirtyTrackingUnsupported` (ENOTTY kept) when the device's driver has
    no logging (vfio-pci without a variant driver)."""

    mechanism = DirtyMechanism.DEVICE

    def __init__(self, device, ranges: Sequence[tuple], page_size: int = 4096):
        self.device = device
        self.ranges = [(int(i), int(n)) for i, n in ranges]
        self.page_size = page_size
        self.tracking = False
        what = f"VFIO_DEVICE_FEATURE_DMA_LOGGING_START on {device.name}"
        try:
            device.feature(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START,
                           uapi.VFIO_DEVICE_FEATURE_PROBE | uapi.VFIO_DEVICE_FEATURE_SET)
        except VfioError as e:
            raise self._unsupported(e, f"PROBE of {what}") from None
        if not self.ranges:
            raise InvalidValue(f"{what}: no IOVA ranges to log")
        for iova, n in self.ranges:
            _check_range(iova, n, page_size, what)

    def start(self) -> None:
        arr = (uapi.vfio_device_feature_dma_logging_range * len(self.ranges))()
        for k, (iova, n) in enumerate(self.ranges):
            arr[k].iova, arr[k].length = iova, n
        ctl = uapi.vfio_device_feature_dma_logging_control(page_size=self.page_size, num_ranges=len(self.ranges),
                                                           ranges=ctypes.addressof(arr))
        out = self.device.feature(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_START, uapi.VFIO_DEVICE_FEATURE_SET,
                                  bytes(ctl))
        # the driver may round the page size up; it says so in the control it writes back
        self.page_size = uapi.vfio_device_feature_dma_logging_control.from_buffer_copy(out).page_size or self.page_size
        self.tracking = True

    def stop(self) -> None:
        self.device.feature(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_STOP, uapi.VFIO_DEVICE_FEATURE_SET)
        self.tracking = False

    def bitmap(self, iova: int, length: int) -> DirtyBitmap:
        what = f"VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT iova {iova:#x} length {length:#x} on {self.device.name}"
        _check_range(iova, length, self.page_size, what)
        data, nbytes = _bitmap_buffer(length, self.page_size)
        rep = uapi.vfio_device_feature_dma_logging_report(iova=iova, length=length, page_size=self.page_size,
                                                          bitmap=ctypes.addressof(data))
        self.device.feature(uapi.VFIO_DEVICE_FEATURE_DMA_LOGGING_REPORT, uapi.VFIO_DEVICE_FEATURE_GET, bytes(rep))
        return DirtyBitmap(iova, length, self.page_size, bytes(data)[:nbytes])

    def close(self) -> None:
        if self.tracking and not self.device.closed:
            self.stop()


def _mapped_ranges(device) -> list:
    space = getattr(device, "dma", None)
    return sorted((m.iova, m.size) for m in getattr(space, "_mappings", ()))


def open_dirty_tracker(device, mechanism: DirtyMechanism | None = None, *,
                       ranges: Iterable[tuple] | None = None) -> DirtyTracker:
    """A :class:`DirtyTracker` for ``device``'s DMA (not started).

    ``mechanism`` None picks as QEMU does: the device's own DMA logging when its driver
    offers it (over ``ranges``, default the device's current DMA mappings), else the
    IOMMU's: a dirty-tracking HWPT on the cdev path, type1's DIRTY_PAGES on the container
    path.  Raises :class:`DirtyTrackingUnsupported` (the kernel's errno of the last
    mechanism tried; every answer in the text) when none is offered.
    """
    if mechanism is not None:
        mechanism = DirtyMechanism(mechanism)
        if mechanism is DirtyMechanism.DEVICE:
            return DeviceDirtyTracker(device, list(ranges) if ranges is not None else _mapped_ranges(device))
        if mechanism is DirtyMechanism.IOMMUFD_HWPT:
            return HwptDirtyTracker(device)
        if device.container is None:
            raise DirtyTrackingUnsupported(errno.ENOTTY, DirtyMechanism.TYPE1,
                                           f"{device.name} is not in a VFIO container")
        return Type1DirtyTracker(device.container)
    answers = []
    order = [DirtyMechanism.DEVICE, DirtyMechanism.IOMMUFD_HWPT if device.container is None else DirtyMechanism.TYPE1]
    last = None
    for m in order:
        try:
            return open_dirty_tracker(device, m, ranges=ranges)
        except (DirtyTrackingUnsupported, InvalidValue) as e:
            answers.append(f"{m.value}: {e}")
            if isinstance(e, DirtyTrackingUnsupported):
                last = e
    err = last.errno if last is not None else errno.ENOTTY
    raise DirtyTrackingUnsupported(err, order[-1], f"no mechanism offered for {device.name}: " + "; ".join(answers))
