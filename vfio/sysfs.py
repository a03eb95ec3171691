"""The one door to sysfs, read side: a (live or captured) system tree.

Linux tells user space what it knows of each PCI function in sysfs, under
``/sys/bus/pci/devices/DDDD:BB:DD.F`` (a symlink into ``/sys/devices/pci...``):
identity and ``config``, the ``resource`` file (the kernel's view of each
BAR), the ``driver`` and ``iommu_group`` links, and, for a device bound to
vfio-pci on a kernel with ``CONFIG_VFIO_DEVICE_CDEV``, ``vfio-dev/vfioN``
naming its ``/dev/vfio/devices`` node.  Everything in the toolkit that needs
one of these facts -- the fd layer finding a device's group or cdev, capture
reading config space and resources, the host model -- asks a
:class:`SysfsTree`.

A tree is rooted at a directory: ``/`` on a live system, or a tree captured
from another machine by ``tools/capture-sysfs`` (``fixtures/sysfs/``), so a
captured tree works everywhere a live one does.  Paths are given relative to
the root (``sys/bus/pci/devices/...``); errors name the path as it is on the
system the root stands for (``/sys/...``) and keep the errno:
:class:`~vfio.errors.VfioError` when a read fails, :class:`HostError` when
the tree is malformed.  Changes to the system (writes, ``chown``,
``modprobe``) go through :class:`vfio.host.sysfs.Sysfs`, which builds on
this class.
"""

from __future__ import annotations

import errno
import os

from .address import PciAddress
from .errors import Error, wrap_oserror

__all__ = ["HostError", "SysfsTree", "PCI_DEVICES", "PCI_DRIVERS", "IOMMU_GROUPS", "IOMMU_CLASS",
           "MDEV_DEVICES", "MDEV_BUS_CLASS", "DT_BASE"]

PCI_DEVICES = "sys/bus/pci/devices"
PCI_DRIVERS = "sys/bus/pci/drivers"
IOMMU_GROUPS = "sys/kernel/iommu_groups"
IOMMU_CLASS = "sys/class/iommu"
#: live mediated devices, and the parents registered with the mdev framework (vfio.host.mdev)
MDEV_DEVICES = "sys/bus/mdev/devices"
MDEV_BUS_CLASS = "sys/class/mdev_bus"
#: the flattened device tree the kernel booted with (vfio.platform); absent on ACPI hosts
DT_BASE = "sys/firmware/devicetree/base"

# Bounds on directory walks: a real host has a few hundred PCI functions at most.
MAX_ENTRIES = 65536


class HostError(Error, ValueError):
    """Bad input about the host: a BDF that does not exist, an unreadable or
    malformed sysfs file, an unsafe request.  The message names the device and path.

    ``errno`` is the system's when a system call failed underneath (a state file
    that cannot be read or locked), else None.  HostError stays a ``ValueError``
    with an optional errno rather than becoming an ``OSError``: callers (the
    CLIs' exit statuses among them) tell "the kernel said no" (``OSError``, a
    :class:`~vfio.errors.VfioError` for sysfs I/O) from "the request or the
    input is wrong" (``ValueError``) by class, and that must not change.
    """

    def __init__(self, *args, errno: int | None = None):
        super().__init__(*args)
        self.errno = errno


class SysfsTree:
    """The root of a (live or captured) system, read only.

    ``root`` is the directory standing for ``/``.  :meth:`of` also accepts the
    older form of a ``sysfs`` argument: the path of a PCI devices directory.
    """

    def __init__(self, root: str = "/"):
        self.root = os.path.abspath(root)
        #: where PCI functions are listed, relative to the root
        self.pci_devices = PCI_DEVICES
        self._bare = False          # a bare PCI devices directory: shown as its real paths

    @classmethod
    def of(cls, sysfs: "SysfsTree | str") -> "SysfsTree":
        """``sysfs`` itself when it is a tree; a string is the path of a PCI devices
        directory (``/sys/bus/pci/devices``, or a directory holding ``DDDD:BB:DD.F``
        entries): the tree it belongs to when it ends in ``sys/bus/pci/devices``,
        else a tree over that directory alone."""
        if isinstance(sysfs, SysfsTree):
            return sysfs
        path = os.path.abspath(sysfs)
        tail = "/" + PCI_DEVICES
        if path.endswith(tail):
            return cls(path[:-len(tail)] or "/")
        tree = cls(path)
        tree.pci_devices = ""
        tree._bare = True
        return tree

    # ---- where things are ---------------------------------------------------
    def path(self, rel: str) -> str:
        """The real file for ``rel`` (relative to the root, e.g. ``sys/bus/pci``)."""
        return os.path.join(self.root, rel)

    def shown(self, rel: str) -> str:
        """``rel`` as it is named on the system the root stands for (``/sys/...``)."""
        if self._bare:
            return self.path(rel)
        return "/" + rel.lstrip("/")

    def pci_device(self, bdf: "PciAddress | str") -> str:
        """The directory of a PCI function, relative to the root.  A string is
        parsed as a PCI address (:class:`~vfio.errors.InvalidValue` if it is not one)."""
        addr = bdf if isinstance(bdf, PciAddress) else PciAddress.parse(bdf)
        return os.path.join(self.pci_devices, str(addr))

    def dev(self, rel: str) -> str:
        """The real path of a device node ``/dev/<rel>`` of the system the root stands
        for (in a captured tree, an empty file of the same name)."""
        return os.path.join("/dev" if self._bare else self.path("dev"), rel)

    # ---- reading ----------------------------------------------------------------
    def exists(self, rel: str) -> bool:
        return os.path.exists(self.path(rel))

    def is_dir(self, rel: str) -> bool:
        return os.path.isdir(self.path(rel))

    def size(self, rel: str) -> int:
        """The size ``stat`` gives (for a sysfs binary attribute such as ``config``,
        what it holds, whether or not this process may read all of it)."""
        try:
            return os.stat(self.path(rel)).st_size
        except OSError as e:
            raise wrap_oserror(e, f"stat {self.shown(rel)}") from None

    def read(self, rel: str) -> str:
        try:
            with open(self.path(rel), "r", errors="replace") as f:
                return f.read()
        except OSError as e:
            raise wrap_oserror(e, f"reading {self.shown(rel)}") from None

    def read_bytes(self, rel: str) -> bytes:
        try:
            with open(self.path(rel), "rb") as f:
                return f.read()
        except OSError as e:
            raise wrap_oserror(e, f"reading {self.shown(rel)}") from None

    def read_optional(self, rel: str) -> str | None:
        """The stripped content, or None when the file does not exist."""
        try:
            with open(self.path(rel), "r", errors="replace") as f:
                return f.read().strip()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise wrap_oserror(e, f"reading {self.shown(rel)}") from None

    def link_name(self, rel: str) -> str | None:
        """The last component of a symlink's target (a driver or group name), None if absent."""
        try:
            return os.path.basename(os.readlink(self.path(rel)))
        except FileNotFoundError:
            return None
        except OSError as e:
            if e.errno == errno.EINVAL:      # exists but is not a symlink: a malformed tree
                raise HostError(f"{self.shown(rel)} is not a symlink", errno=e.errno) from None
            raise wrap_oserror(e, f"reading link {self.shown(rel)}") from None

    def real(self, rel: str) -> str:
        """Where ``rel`` really is, relative to the root (symlinks resolved)."""
        real = _realpath(self.path(rel))
        top = os.path.abspath(self.root)        # what relpath measures from
        # a resolved path is normalized: below the root, relpath is what follows the root
        if top == "/" and real.startswith("/"):
            return real[1:] or "."
        if real.startswith(top + "/"):
            return real[len(top) + 1:]
        return os.path.relpath(real, self.root)

    def listdir(self, rel: str) -> list[str]:
        """Sorted entries of a directory; [] if it does not exist."""
        try:
            names = os.listdir(self.path(rel))
        except FileNotFoundError:
            return []
        except OSError as e:
            raise wrap_oserror(e, f"listing {self.shown(rel)}") from None
        if len(names) > MAX_ENTRIES:
            raise HostError(f"{self.shown(rel)} has {len(names)} entries (more than {MAX_ENTRIES})")
        return sorted(names)


def available_interfaces(devdir: str = "/dev") -> dict:
    """Which VFIO interfaces this host offers: the legacy container, the cdev path
    (``/dev/vfio/devices`` + ``/dev/iommu``), and no-IOMMU groups.  ``devdir``: the
    ``/dev`` of the system asked about (a captured tree's ``dev`` directory)."""
    dev = SysfsTree(devdir)         # read through the one door, as sysfs is
    names = dev.listdir("vfio") if dev.is_dir("vfio") else []
    return {
        "container": dev.exists("vfio/vfio"),
        "cdev": dev.is_dir("vfio/devices") and dev.exists("iommu"),
        "noiommu_groups": sorted(n for n in names if n.startswith("noiommu-")),
        "groups": sorted((n for n in names if n.isdigit()), key=int),
    }


def _realpath(path: str) -> str:
    """``os.path.realpath(path)``, resolved by the kernel when the path exists.

    ``os.path.realpath`` walks the path in Python, one ``lstat`` per
    component; a host listing resolves a couple of hundred sysfs links that
    way.  Opening the path with ``O_PATH`` (nothing is read, a FIFO does not
    block) and reading back ``/proc/self/fd/N`` gives the same answer from
    one path walk in the kernel.  A path that does not resolve (missing, a
    dangling link, a loop) or a system without /proc takes
    ``os.path.realpath``, whose answer for those is its own."""
    try:
        fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
    except (OSError, AttributeError):
        return os.path.realpath(path)
    try:
        real = os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(path)
    finally:
        os.close(fd)
    # the kernel marks an unlinked file "... (deleted)"; /proc paths are absolute
    if not real.startswith("/") or real.endswith(" (deleted)"):
        return os.path.realpath(path)
    return real
