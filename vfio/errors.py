"""Errors raised by the toolkit.

Where the kernel (or a backend that stands in for it, such as replay) refused a
request, the error is a :class:`VfioError`, an ``OSError`` that keeps the
errno and says what was being done on which device::

    import errno
    VfioError(errno.EINVAL, "VFIO_DEVICE_GET_REGION_INFO index 12 on 0000:00:04.0")

so ``except OSError`` and ``e.errno == errno.EINVAL`` work as for any system
call.  Errors that are not the kernel's (bad arguments, malformed input files,
unsafe requests) are ``ValueError`` subclasses that name the thing and the
offset or path at fault.

Every error the toolkit raises derives from :class:`Error` (``vfio.Error``), so
``except vfio.Error`` catches the toolkit's refusals and nothing else; each also
keeps the built-in base a caller may already catch (``OSError``, ``ValueError``,
``KeyError``, ``IndexError``, ``MemoryError``, ``RuntimeError``).
"""

from __future__ import annotations

import errno as _errno
import os


class Error(Exception):
    """The root of every error this toolkit raises (``except vfio.Error``)."""


class VfioError(Error, OSError):
    """The kernel (or a backend standing in for it) refused a VFIO request.

    ``errno`` is the kernel's; ``strerror`` is ``"<what was being done>:
    <os.strerror(errno)>"``.
    """

    def __init__(self, err: int, what: str, filename: str | None = None):
        msg = f"{what}: {os.strerror(err)} [{_errno.errorcode.get(err, err)}]"
        if filename is None:
            super().__init__(err, msg)
        else:
            super().__init__(err, msg, filename)
        self.what = what

    def __str__(self) -> str:  # OSError's own form puts "[Errno N]" first; keep it and the context
        return f"[Errno {self.errno}] {self.strerror}"


class UnsafeOperationError(VfioError):
    """A request that is refused because it makes no sense or is dangerous in the
    current mode (for example DMA mapping on a no-IOMMU container)."""

    def __init__(self, what: str, err: int = _errno.EPERM):
        super().__init__(err, what)


class RegionAccessError(Error, ValueError):
    """An access outside a region's bounds, of an unsupported width, or to a
    region that does not allow it (checked before any system call)."""


class InvalidValue(Error, ValueError):
    """A value given to the toolkit, or read from the kernel or a file, that it
    cannot use: a malformed address, a size of zero, a capability chain that loops."""


class IovaExhausted(Error, MemoryError):
    """No free IOVA range is large enough (under the limit asked for)."""


class IovaNotAllocated(Error, KeyError):
    """An IOVA freed that the allocator did not hand out (or already took back)."""


class FeatureMissing(Error, KeyError):
    """The device has no such BAR, capability or interrupt vector."""


class VectorOutOfRange(Error, IndexError):
    """An interrupt vector number outside the device's table."""


def wrap_oserror(e: OSError, what: str) -> VfioError:
    """Turn an OSError from a system call into a VfioError that says what was being done."""
    return VfioError(e.errno if e.errno is not None else _errno.EIO, what)
