"""The host as sysfs shows it: PCI devices, their drivers and IOMMU groups.

Linux describes every PCI function under ``/sys/bus/pci/devices/DDDD:BB:DD.F``
(a symlink into ``/sys/devices/pci.../``, whose nesting follows the bridges).
The files this module reads there:

* ``vendor``, ``device``, ``subsystem_vendor``, ``subsystem_device``,
  ``class`` (24 bits: base class, subclass, programming interface),
  ``revision``, ``boot_vga`` (1 on the firmware's console VGA device),
  ``numa_node``, ``config`` (config space: 64 bytes unless root);
* ``driver`` -- a link to ``/sys/bus/pci/drivers/NAME`` when a driver is bound;
* ``driver_override`` -- the one driver allowed to bind (reads ``(null)``
  when unset); this is what assignment uses instead of ``new_id``, because it
  affects one device, not every device with the same IDs;
* ``iommu_group`` -- a link to ``/sys/kernel/iommu_groups/N``.  With no IOMMU
  (or none enabled) there are no groups and the link is missing.

Every path is taken relative to a configurable root (``/`` on a live
system), so the whole model runs unchanged on trees captured from other
machines by ``tools/capture-sysfs`` (see ``fixtures/sysfs/``).  Reading is
:class:`vfio.sysfs.SysfsTree`'s, the one sysfs door at the bottom of the
package that the fd layer and capture read through too; :class:`Sysfs`
builds on it with the changes.

Every change made to the system goes through one object, :class:`Sysfs`:
``write(path, value)``, ``chown(path, uid, gid)`` and ``modprobe(name)``.
:class:`DryRunSysfs` records those actions instead of doing them (what
``vfio-assign --dry-run`` prints), :mod:`vfio.host.simulate` makes a fixture
tree react to them the way the kernel does, and the fault-injection tests
wrap them to fail at each step.  For crash tests across processes,
``VFIO_FAULT_KILL_AT_WRITE=N`` (or ``N+``) makes :meth:`Sysfs.write` SIGKILL
the process just before (after) its Nth write.
"""

from __future__ import annotations

import errno
import os

from .._value import Value
from ..errors import InvalidValue, VfioError, wrap_oserror
from ..address import PciAddress, normalize_bdf
# the read side lives at the bottom of the package (the fd layer and capture use it too);
# its names stay importable from here
from ..sysfs import (DT_BASE, IOMMU_CLASS, IOMMU_GROUPS, MAX_ENTRIES, PCI_DEVICES, PCI_DRIVERS,  # noqa: F401
                     HostError, SysfsTree)

#: ``iommu_group_set_name()`` of drivers/vfio/group.c for its no-IOMMU groups.
NOIOMMU_GROUP_NAME = "vfio-noiommu"


class DeviceNotFound(HostError):
    """No PCI device matches the BDF or vendor:device given."""


class Action(Value):
    """One change to the system, as ``vfio-assign --dry-run`` prints it."""
    kind: str                 # "write", "chown" or "modprobe"
    path: str                 # absolute path on the system the root stands for
    value: str                # written text; "uid:gid" for chown; module for modprobe

    def __init__(self, kind: str, path: str = "", value: str = ""):
        self.__dict__.update(kind=kind, path=path, value=value)

    def __str__(self) -> str:
        if self.kind == "write":
            return f"echo {self.value} > {self.path}" if self.value.strip() else f"echo > {self.path}"
        if self.kind == "chown":
            uid, gid = self.value.split(":")
            if gid == "-1":
                return f"chown {uid} {self.path}"
            return f"chgrp {gid} {self.path}" if uid == "-1" else f"chown {self.value} {self.path}"
        return f"modprobe {self.value}"


#: See :meth:`Sysfs.write`.
FAULT_ENV = "VFIO_FAULT_KILL_AT_WRITE"
_writes_started = 0


def _fault_point(after: bool) -> None:
    """SIGKILL this process at the write point ``VFIO_FAULT_KILL_AT_WRITE`` names."""
    global _writes_started
    spec = os.environ.get(FAULT_ENV)
    if not after:
        _writes_started += 1
    if not spec:
        return
    n, at_after = (spec[:-1], True) if spec.endswith("+") else (spec, False)
    if n.isdigit() and int(n) == _writes_started and at_after == after:
        import signal           # here: only a fault-injection run gets this far
        os.kill(os.getpid(), signal.SIGKILL)


class Sysfs(SysfsTree):
    """The root of a (live or captured) system plus the only door for changes to it.

    Reading (``path``, ``shown``, ``exists``, ``read``, ``read_bytes``,
    ``read_optional``, ``link_name``, ``real``, ``listdir``) is
    :class:`vfio.sysfs.SysfsTree`'s."""

    # ---- the only ways this toolkit changes the host ---------------------
    def write(self, rel: str, value: str) -> None:
        """Write ``value`` to a sysfs attribute in a single write(2), as the kernel expects.

        Fault injection (for crash tests of callers such as vfio-assign): with
        ``VFIO_FAULT_KILL_AT_WRITE=N`` in the environment the process SIGKILLs
        itself just before its Nth write through this method, with ``N+`` just
        after it (the kernel has acted, the caller's bookkeeping has not);
        ``vfio-assign --dry-run --json`` lists a plan's write points."""
        _fault_point(False)
        try:
            # O_TRUNC as the shell's ">" does: sysfs ignores it; a captured tree then
            # reads back what was written, as the attribute would
            fd = os.open(self.path(rel), os.O_WRONLY | os.O_TRUNC)
            try:
                os.write(fd, value.encode())
            finally:
                os.close(fd)
        except OSError as e:
            raise wrap_oserror(e, f"writing {value.strip()!r} to {self.shown(rel)}") from None
        _fault_point(True)

    def chown(self, rel: str, uid: int, gid: int) -> None:
        try:
            os.chown(self.path(rel), uid, gid)
        except OSError as e:
            raise wrap_oserror(e, f"chown {uid}:{gid} {self.shown(rel)}") from None

    def modprobe(self, module: str) -> None:
        import subprocess           # here: only loading a module runs a program
        try:
            r = subprocess.run(["modprobe", module], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise VfioError(getattr(e, "errno", None) or errno.EIO, f"modprobe {module}: {e}") from None
        if r.returncode != 0:
            raise VfioError(errno.ENOENT, f"modprobe {module}: {r.stderr.strip() or 'exit status %d' % r.returncode}")


class DryRunSysfs(Sysfs):
    """Reads the real tree, records every change in ``actions`` and makes none."""

    def __init__(self, root: str = "/"):
        super().__init__(root)
        self.actions: list[Action] = []

    def write(self, rel: str, value: str) -> None:
        self.actions.append(Action("write", self.shown(rel), value))

    def chown(self, rel: str, uid: int, gid: int) -> None:
        self.actions.append(Action("chown", self.shown(rel), f"{uid}:{gid}"))

    def modprobe(self, module: str) -> None:
        self.actions.append(Action("modprobe", "", module))


def _hex(sysfs: Sysfs, rel: str) -> int:
    text = sysfs.read(rel).strip()
    try:
        return int(text, 16)
    except ValueError:
        raise HostError(f"{sysfs.shown(rel)}: expected a hex number, found {text!r}") from None


BRIDGE_CLASS = 0x06          # base class "bridge"
PCI_BRIDGE_SUBCLASS = 0x0604  # PCI-to-PCI bridge (root ports and switch ports too)


class PciDevice(Value):
    """A snapshot of one PCI function's sysfs directory.  IDs are kept as numbers."""
    bdf: str
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    class_code: int                 # 24 bits: base << 16 | sub << 8 | prog-if
    revision: int
    driver: str | None
    driver_override: str | None
    iommu_group: str | None
    path: str                       # real directory, relative to the root
    boot_vga: bool
    numa_node: int | None

    def __init__(self, bdf: str, vendor: int, device: int, subsystem_vendor: int, subsystem_device: int,
                 class_code: int, revision: int, driver: str | None, driver_override: str | None,
                 iommu_group: str | None, path: str, boot_vga: bool = False, numa_node: int | None = None):
        self.__dict__.update(bdf=bdf, vendor=vendor, device=device, subsystem_vendor=subsystem_vendor,
                             subsystem_device=subsystem_device, class_code=class_code, revision=revision,
                             driver=driver, driver_override=driver_override, iommu_group=iommu_group,
                             path=path, boot_vga=boot_vga, numa_node=numa_node)

    @property
    def ids(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def base_class(self) -> int:
        return self.class_code >> 16

    @property
    def is_bridge(self) -> bool:
        """Any bridge (host, ISA, PCI-to-PCI...)."""
        return self.base_class == BRIDGE_CLASS

    @property
    def is_pci_bridge(self) -> bool:
        """A PCI-to-PCI bridge: root ports and switch ports, normally on pcieport."""
        return self.class_code >> 8 == PCI_BRIDGE_SUBCLASS

    @property
    def parent(self) -> str | None:
        """The BDF of the upstream bridge, None on a root bus."""
        up = os.path.basename(os.path.dirname(self.path))
        try:
            return normalize_bdf(up)
        except ValueError:
            return None


class IommuGroup(Value):
    """One IOMMU group: the devices the IOMMU cannot tell apart, isolated together."""
    number: str
    devices: tuple                  # of PciDevice
    type: str | None                # "DMA", "DMA-FQ", "identity", ...
    #: members that are not PCI functions, by sysfs name: mediated devices (their UUID,
    #: each alone in a group VFIO made for it), platform devices
    others: tuple

    def __init__(self, number: str, devices: tuple = (), type: str | None = None, others: tuple = ()):
        self.__dict__.update(number=number, devices=devices, type=type, others=others)

    @property
    def bdfs(self) -> list[str]:
        return [d.bdf for d in self.devices]


class Host:
    """PCI devices, drivers and IOMMU groups of the system under ``sysfs.root``."""

    def __init__(self, root: str = "/", sysfs: Sysfs | None = None):
        self.sysfs = sysfs if sysfs is not None else Sysfs(root)
        self.root = self.sysfs.root

    # ---- devices ------------------------------------------------------------
    def bdfs(self) -> list[str]:
        return self.sysfs.listdir(PCI_DEVICES)

    def device(self, bdf: str) -> PciDevice:
        """The current state of one device (re-read every call: drivers change)."""
        try:
            bdf = normalize_bdf(bdf)
        except ValueError as e:
            raise HostError(str(e)) from None
        rel = f"{PCI_DEVICES}/{bdf}"
        if not self.sysfs.exists(rel):
            raise DeviceNotFound(f"no PCI device {bdf} ({self.sysfs.shown(rel)} does not exist)")
        s = self.sysfs
        override = s.read_optional(f"{rel}/driver_override")
        numa = s.read_optional(f"{rel}/numa_node")
        return PciDevice(
            bdf=bdf,
            vendor=_hex(s, f"{rel}/vendor"), device=_hex(s, f"{rel}/device"),
            subsystem_vendor=_hex(s, f"{rel}/subsystem_vendor") if s.exists(f"{rel}/subsystem_vendor") else 0,
            subsystem_device=_hex(s, f"{rel}/subsystem_device") if s.exists(f"{rel}/subsystem_device") else 0,
            class_code=_hex(s, f"{rel}/class"),
            revision=_hex(s, f"{rel}/revision") if s.exists(f"{rel}/revision") else 0,
            driver=s.link_name(f"{rel}/driver"),
            driver_override=None if override in (None, "", "(null)") else override,
            iommu_group=s.link_name(f"{rel}/iommu_group"),
            path=s.real(rel),
            boot_vga=s.read_optional(f"{rel}/boot_vga") == "1",
            numa_node=int(numa) if numa not in (None, "") and numa.lstrip("-").isdigit() and int(numa) >= 0 else None,
        )

    def devices(self) -> list[PciDevice]:
        return [self.device(b) for b in self.bdfs()]

    def find(self, spec: str) -> list[PciDevice]:
        """Devices named by a BDF (``0000:00:04.0`` or ``00:04.0``) or by
        ``vendor:device`` in hex (every device with those IDs)."""
        s = spec.strip().lower()
        parts = s.split(":")
        if len(parts) == 2 and "." not in s and all(len(p) == 4 for p in parts):
            try:
                v, d = int(parts[0], 16), int(parts[1], 16)
            except ValueError:
                raise HostError(f"{spec!r} is neither a PCI address nor vendor:device in hex") from None
            found = [dev for dev in self.devices() if dev.vendor == v and dev.device == d]
            if not found:
                raise DeviceNotFound(f"no PCI device with vendor:device {s} under {self.sysfs.shown(PCI_DEVICES)}")
            return found
        try:
            return [self.device(s)]
        except HostError as e:
            if isinstance(e, DeviceNotFound):
                raise
            raise HostError(f"{spec!r} is neither a PCI address (DDDD:BB:DD.F) nor vendor:device in hex") from None

    def config(self, bdf: str) -> bytes:
        """Config space as sysfs gives it (all of it as root, 64 bytes otherwise)."""
        return self.sysfs.read_bytes(f"{PCI_DEVICES}/{normalize_bdf(bdf)}/config")

    def resources(self, bdf: str) -> list:
        """Every line of sysfs ``resource`` as :class:`vfio.pci.config.KernelResource`
        (line 0-5 the BARs, 6 the ROM, 7-12 an SR-IOV PF's VF BARs, then bridge
        windows): the kernel's view of each BAR, including those whose register
        reads 0 (SR-IOV VFs, legacy-mode IDE).  [] when the file does not exist
        (an old capture).  Raises :class:`HostError` naming the path and line
        when a line is not ``start end flags`` in hex."""
        from ..pci.config import parse_resources
        rel = f"{PCI_DEVICES}/{normalize_bdf(bdf)}/resource"
        try:
            return parse_resources(self.sysfs.read_optional(rel) or "", self.sysfs.shown(rel))
        except InvalidValue as e:
            raise HostError(str(e)) from None

    def has_driver(self, name: str) -> bool:
        return self.sysfs.exists(f"{PCI_DRIVERS}/{name}")

    # ---- IOMMU groups ---------------------------------------------------------
    def group_numbers(self) -> list[str]:
        return sorted(self.sysfs.listdir(IOMMU_GROUPS), key=lambda n: (not n.isdigit(), int(n) if n.isdigit() else 0, n))

    @property
    def has_iommu(self) -> bool:
        """True when the kernel has an IOMMU registered: an entry in ``/sys/class/iommu``
        (every IOMMU driver registers one: dmar0, ivhd0, the virtio-iommu device...)
        or an IOMMU group that is not one of VFIO's no-IOMMU groups.

        Not judged from any one device's ``iommu_group``: some IOMMUs (virtio-iommu
        described by ACPI VIOT) attach a device, and give it a group, only when a
        driver probes it."""
        if self.sysfs.listdir(IOMMU_CLASS):
            return True
        return any(not self.is_noiommu_group(n) for n in self.group_numbers())

    def is_noiommu_group(self, number: str) -> bool:
        """A group VFIO made up in no-IOMMU mode (its ``name`` is ``vfio-noiommu``;
        the node is ``/dev/vfio/noiommu-N``): no IOMMU stands behind it.

        VFIO gives the same name to the group it makes for each mediated device
        (an "emulated IOMMU" group, node ``/dev/vfio/N``: the parent driver does
        the isolation); a group whose members are all mdevs is not a no-IOMMU one."""
        if self.sysfs.read_optional(f"{IOMMU_GROUPS}/{number}/name") != NOIOMMU_GROUP_NAME:
            return False
        members = self.sysfs.listdir(f"{IOMMU_GROUPS}/{number}/devices")
        return not (members and all(self.sysfs.exists(f"sys/bus/mdev/devices/{m}") for m in members))

    def group(self, number: str) -> IommuGroup:
        rel = f"{IOMMU_GROUPS}/{number}"
        if not self.sysfs.exists(rel):
            raise HostError(f"no IOMMU group {number} ({self.sysfs.shown(rel)} does not exist)")
        names = self.sysfs.listdir(f"{rel}/devices")
        devs = tuple(self.device(b) for b in names if PciAddress.is_sysfs_name(b))
        others = tuple(b for b in names if not PciAddress.is_sysfs_name(b))
        return IommuGroup(str(number), devs, self.sysfs.read_optional(f"{rel}/type"), others)

    def groups(self) -> list[IommuGroup]:
        return [self.group(n) for n in self.group_numbers()]

    # ---- VFIO interfaces ------------------------------------------------------
    # ---- device-tree devices (platform and AMBA buses) ---------------------------------
    def platform_devices(self) -> list:
        """Every platform and AMBA device with a device-tree node, as
        :class:`vfio.platform.PlatformNode` (bus, DT path, driver, override, group)."""
        if not self.sysfs.exists(DT_BASE):
            return []       # an ACPI host (x86): no device tree, and vfio.platform stays unloaded
        from ..platform import platform_devices
        return platform_devices(self.sysfs)

    def platform_device(self, name: str):
        """One platform or AMBA device by name; raises :class:`DeviceNotFound`."""
        from ..platform import find_platform_device
        try:
            return find_platform_device(name, self.sysfs)
        except VfioError as e:
            raise DeviceNotFound(str(e)) from None
        except ValueError as e:
            raise HostError(str(e)) from None

    def interfaces(self) -> dict:
        """Which VFIO interfaces the host offers (see :func:`vfio.available_interfaces`),
        plus whether no-IOMMU mode is switched on in the vfio module."""
        from .. import available_interfaces
        info = dict(available_interfaces(self.sysfs.path("dev")))
        mode = self.sysfs.read_optional("sys/module/vfio/parameters/enable_unsafe_noiommu_mode")
        info["noiommu_mode"] = None if mode is None else mode in ("Y", "1")
        return info
