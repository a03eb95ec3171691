"""The backend seam: the few primitives a VFIO device is built on.

A VFIO device is a file descriptor with a handful of ioctls (device info,
region info, IRQ info, SET_IRQS, reset, hot reset, features) and a file
offset space in which each region sits at its own offset (``pread``,
``pwrite``, ``mmap``).  Everything the toolkit does with a device -- region
objects, config-space reads of each width, capability walks, interrupt
management, the PCI passthrough model, capture -- is written once, in
:mod:`vfio.device` and above, on top of this class.

Three backends implement it:

* :class:`vfio.device.KernelBackend`: a real device fd, from a group
  (``VFIO_GROUP_GET_DEVICE_FD``) or a cdev (``/dev/vfio/devices/vfioN``).
* :class:`vfio.record.replay.ReplayBackend`: a record file served back with the
  kernel's behaviour where it is known.
* :class:`vfio.model.ModelBackend`: a device written in Python (a
  :class:`vfio.model.DeviceModel`), served with that same behaviour.

The primitives deliberately speak the kernel's own language: variable-length
info calls take an ``argsz`` and return the buffer exactly as the kernel would
fill it (so a too-small ``argsz`` comes back with the size needed and
``cap_offset`` 0, and the one retry loop in :mod:`vfio.device` is exercised on
both backends); ``set_irqs`` takes a complete ``struct vfio_irq_set`` as built
by :func:`vfio.uapi.build_irq_set`.  Failures raise
:class:`vfio.errors.VfioError` with the kernel's errno.
"""

from __future__ import annotations

import abc
import errno
import mmap


class DeviceBackend(abc.ABC):
    """Primitives of one VFIO device.  See the module docstring."""

    #: Name used in error messages: a BDF, a cdev path or a record file.
    name: str = "?"
    #: True for a backend that must see every access (a cassette being recorded or
    #: replayed, :mod:`vfio.record.cassette`): :meth:`vfio.device.Region.map` then
    #: gives a view whose accessors go through ``pread``/``pwrite``, not a mapping.
    traps_mmio: bool = False

    # ---- ioctls -----------------------------------------------------------
    @abc.abstractmethod
    def get_info(self, argsz: int) -> bytes:
        """VFIO_DEVICE_GET_INFO with a buffer of ``argsz`` bytes."""

    @abc.abstractmethod
    def get_region_info(self, index: int, argsz: int) -> bytes:
        """VFIO_DEVICE_GET_REGION_INFO for ``index`` with a buffer of ``argsz`` bytes."""

    @abc.abstractmethod
    def get_irq_info(self, index: int) -> bytes:
        """VFIO_DEVICE_GET_IRQ_INFO for ``index``: a filled ``struct vfio_irq_info``."""

    @abc.abstractmethod
    def set_irqs(self, irq_set: bytes) -> None:
        """VFIO_DEVICE_SET_IRQS with a complete ``struct vfio_irq_set`` (header + data)."""

    @abc.abstractmethod
    def reset(self) -> None:
        """VFIO_DEVICE_RESET."""

    def get_pci_hot_reset_info(self, argsz: int) -> bytes:
        """VFIO_DEVICE_GET_PCI_HOT_RESET_INFO with a buffer of ``argsz`` bytes."""
        from .errors import VfioError
        raise VfioError(errno.ENOTTY, f"VFIO_DEVICE_GET_PCI_HOT_RESET_INFO on {self.name}")

    def pci_hot_reset(self, hot_reset: bytes) -> None:
        """VFIO_DEVICE_PCI_HOT_RESET with a complete ``struct vfio_pci_hot_reset``."""
        from .errors import VfioError
        raise VfioError(errno.ENOTTY, f"VFIO_DEVICE_PCI_HOT_RESET on {self.name}")

    def feature(self, buf: bytes) -> bytes:
        """VFIO_DEVICE_FEATURE with a complete ``struct vfio_device_feature``; returns the buffer."""
        from .errors import VfioError
        raise VfioError(errno.ENOTTY, f"VFIO_DEVICE_FEATURE on {self.name}")

    # ---- the region offset space -----------------------------------------
    @abc.abstractmethod
    def pread(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at absolute device-fd ``offset`` (region offset + offset in region)."""

    @abc.abstractmethod
    def pwrite(self, offset: int, data: bytes) -> int:
        """Write ``data`` at absolute device-fd ``offset``; returns the count written."""

    @abc.abstractmethod
    def mmap(self, offset: int, length: int, prot: int = mmap.PROT_READ | mmap.PROT_WRITE) -> mmap.mmap:
        """Map ``length`` bytes at absolute device-fd ``offset`` (page aligned), MAP_SHARED."""

    # ---- lifetime ---------------------------------------------------------
    def fileno(self) -> int:
        """The device fd, where there is one (KVM irqfd users need it); -1 otherwise."""
        return -1

    @abc.abstractmethod
    def close(self) -> None:
        """Release the device.  Idempotent."""
