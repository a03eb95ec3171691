"""Mediated devices (mdev): virtual devices a parent driver carves out of itself.

A *mediated device* is a device the kernel makes up in software on behalf of a
parent driver -- a slice of a GPU (Intel GVT-g, NVIDIA vGPU), an s390
channel-I/O subchannel or crypto adapter, or the kernel's own sample parents
``mtty`` (virtual serial ports) and ``mdpy`` (a virtual display).  The parent
"mediates": user space talks to the mdev through the ordinary VFIO device API
(regions, IRQs, reset, migration), and the parent driver emulates each access.

The mdev framework (``drivers/vfio/mdev``, documented in the kernel's
``Documentation/driver-api/vfio-mediated-device.rst``) shows it all in sysfs:

* ``/sys/class/mdev_bus/PARENT`` -- a link to every registered parent device
  (``mtty``, ``mdpy``, or a PCI address such as ``0000:00:02.0``);
* ``PARENT/mdev_supported_types/TYPE/`` -- one directory per type the parent
  offers, named ``DRIVER-NAME`` (``mtty-1``, ``mtty-2``): ``name`` (a pretty
  name, e.g. "Dual port serial"), ``description`` (optional),
  ``device_api`` (which VFIO device API its devices speak: ``vfio-pci``,
  ``vfio-ccw``, ``vfio-ap``...), ``available_instances`` (how many more may be
  created now), ``devices/`` (links to the live mdevs of this type) and the
  write-only ``create``: writing a UUID there creates an mdev;
* ``/sys/bus/mdev/devices/UUID`` -- each mdev (a directory below its parent),
  with ``mdev_type`` (a link to its type), ``iommu_group`` (an mdev has no real
  IOMMU: VFIO gives it a group of its own, ``/dev/vfio/N``, whose DMA the parent
  driver pins and translates -- an "emulated IOMMU"), ``driver``, ``vfio-dev/vfioN``
  (its cdev, on a kernel with ``CONFIG_VFIO_DEVICE_CDEV``) and the write-only
  ``remove`` (writing ``1`` destroys it).

The kernel refuses a second mdev with a UUID in use (EEXIST) and a creation
past the parent's capacity (EUSERS from the mdev core; a driver that counts its
own capacity answers from its probe: ENOSPC for mtty).  It does *not* refuse removing an mdev a
process holds open: the write blocks, uninterruptibly after the first signal,
until the device is closed.  So :meth:`MdevHost.remove` checks first and
refuses with EBUSY (see :meth:`MdevHost.holders`).

Persistent definitions follow mdevctl: one JSON file per mdev, named by its
UUID, in a directory named by its parent, under a configuration directory
(mdevctl's is ``/etc/mdevctl.d``; this toolkit's default is
``ROOT/etc/vfio-toolkit/mdev.d``, or ``$VFIO_MDEV_CONFIG_DIR``), holding
``{"mdev_type": TYPE, "start": "auto"|"manual", "attrs": [{NAME: VALUE}, ...]}``
-- so an mdevctl configuration directory can be read as is.  ``attrs`` are
written, in order, to the mdev's own sysfs attributes after it is created
(vendor tunables such as vfio-ap's ``assign_adapter``).

Every path is read through :class:`vfio.sysfs.SysfsTree` under a root and
every change goes through :class:`vfio.host.sysfs.Sysfs`, so a fixture tree
works like ``/`` and :class:`~vfio.host.sysfs.DryRunSysfs` turns a change
into the writes it would make.
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass, field
from enum import Enum

from ..errors import VfioError
from ..sysfs import MDEV_BUS_CLASS, MDEV_DEVICES, SysfsTree
from .sysfs import DryRunSysfs, HostError, Sysfs

__all__ = ["DeviceApi", "StartPolicy", "MdevType", "MdevParent", "MdevDevice", "MdevDefinition",
           "MdevError", "MdevNotFound", "MdevInUse", "MdevHost", "Definitions", "normalize_uuid",
           "create_mdev", "remove_mdev", "mdev_group_path", "mdev_cdev_path", "mdev_device_api",
           "MDEV_DEVICES", "MDEV_BUS_CLASS", "CONFIG_DIR_ENV", "DEFAULT_CONFIG_DIR"]

TYPES_DIR = "mdev_supported_types"
#: Where definitions live, relative to the system root, unless ``$VFIO_MDEV_CONFIG_DIR`` says.
DEFAULT_CONFIG_DIR = "etc/vfio-toolkit/mdev.d"
CONFIG_DIR_ENV = "VFIO_MDEV_CONFIG_DIR"
# bound on a definition file: mdevctl's are a few hundred bytes
MAX_DEFINITION_BYTES = 1 << 20

# the kernel's guid_parse(): exactly 8-4-4-4-12 hex digits (create_store takes 36 or 37 bytes)
_UUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


class DeviceApi(str, Enum):
    """The VFIO device API an mdev type's devices speak (its ``device_api``
    file; ``VFIO_DEVICE_API_*_STRING`` in ``include/uapi/linux/vfio.h``).  The
    API decides the region and IRQ index layout: ``vfio-pci`` devices have
    vfio-pci's fixed indexes (BAR0-5, ROM, CONFIG, VGA; INTx, MSI, MSI-X, ERR,
    REQ) and ``VFIO_DEVICE_FLAGS_PCI``."""
    PCI = "vfio-pci"
    PLATFORM = "vfio-platform"
    AMBA = "vfio-amba"
    CCW = "vfio-ccw"
    AP = "vfio-ap"

    def __str__(self) -> str:
        return self.value


class StartPolicy(str, Enum):
    """When a defined mdev is to be started (mdevctl's ``start``): ``auto`` when
    its parent appears (mdevctl's udev rule does that; this toolkit only keeps
    the value), ``manual`` by ``start -u UUID``."""
    AUTO = "auto"
    MANUAL = "manual"

    def __str__(self) -> str:
        return self.value


class MdevError(HostError):
    """A request about mediated devices that is wrong or refused before anything
    changed: a malformed UUID, an unknown parent or type, a UUID in use, no
    instances left, a malformed definition file.  ``errno`` is the one the kernel
    would have answered, where there is one (EEXIST, EUSERS, ENODEV)."""


class MdevNotFound(MdevError):
    """No such mdev, parent, type or definition (errno ENODEV or ENOENT)."""


class MdevInUse(VfioError):
    """The mdev is open (its group or cdev): removing it would block until it is
    closed, so it is refused.  errno EBUSY."""

    def __init__(self, what: str):
        super().__init__(errno.EBUSY, what)


def normalize_uuid(text: str) -> str:
    """An mdev UUID as the kernel names it (``%pUl``: lower case, 8-4-4-4-12).
    Raises :class:`MdevError` (errno EINVAL) for anything else, as the kernel's
    ``create`` does."""
    if not isinstance(text, str) or not _UUID_RE.match(text.strip()):
        raise MdevError(f"malformed mdev UUID {text!r} (expected 8-4-4-4-12 hex digits, "
                        "e.g. 83b8f4f2-509f-382f-3c1e-e6bfe0fa1001)", errno=errno.EINVAL)
    return text.strip().lower()


def _device_api(text: str | None):
    if text is None:
        return None
    try:
        return DeviceApi(text)
    except ValueError:
        return text             # a device API newer than this module: kept as the kernel says it


@dataclass(frozen=True)
class MdevType:
    """One ``mdev_supported_types/TYPE`` directory of a parent."""
    parent: str
    type_id: str                        # the directory name: "mtty-2"
    name: str | None                    # "Dual port serial"
    description: str | None             # optional in the kernel
    device_api: DeviceApi | str | None  # a DeviceApi, or the kernel's text for an API unknown here
    available_instances: int
    devices: tuple = ()                 # UUIDs of the live mdevs of this type
    path: str = ""                      # relative to the root

    def to_dict(self) -> dict:
        return {"parent": self.parent, "type": self.type_id, "name": self.name, "description": self.description,
                "device_api": None if self.device_api is None else str(self.device_api),
                "available_instances": self.available_instances, "devices": list(self.devices)}


@dataclass(frozen=True)
class MdevParent:
    """A device registered with the mdev framework (an entry of ``/sys/class/mdev_bus``)."""
    name: str                           # "mtty", "0000:00:02.0"
    path: str                           # its real directory, relative to the root
    types: tuple = ()                   # of MdevType

    def type(self, type_id: str) -> MdevType:
        for t in self.types:
            if t.type_id == type_id:
                return t
        known = ", ".join(t.type_id for t in self.types) or "none"
        raise MdevNotFound(f"mdev parent {self.name} has no type {type_id!r} (its types: {known})",
                           errno=errno.ENOENT)


@dataclass(frozen=True)
class MdevDevice:
    """One live mdev (``/sys/bus/mdev/devices/UUID``)."""
    uuid: str
    parent: str
    type_id: str | None
    device_api: DeviceApi | str | None
    iommu_group: str | None
    driver: str | None
    cdev: str | None                    # "vfio0" (its /dev/vfio/devices node), None without one
    path: str                           # its real directory, relative to the root

    def to_dict(self) -> dict:
        return {"uuid": self.uuid, "parent": self.parent, "type": self.type_id,
                "device_api": None if self.device_api is None else str(self.device_api),
                "iommu_group": self.iommu_group, "driver": self.driver, "cdev": self.cdev}


@dataclass(frozen=True)
class MdevDefinition:
    """A saved mdev: what ``start -u UUID`` creates again."""
    uuid: str
    parent: str
    type_id: str
    start: StartPolicy = StartPolicy.MANUAL
    attrs: tuple = field(default_factory=tuple)     # of (name, value), written in order
    path: str | None = None                         # the file it was read from

    def to_json(self) -> dict:
        """mdevctl's file content (the parent is the directory, the UUID the file name)."""
        return {"mdev_type": self.type_id, "start": self.start.value,
                "attrs": [{k: v} for k, v in self.attrs]}


# ---------------------------------------------------------------------------------------
# Where an mdev's nodes are (the fd layer's lookups: vfio.open.open_mdev_device)
# ---------------------------------------------------------------------------------------

def _tree(sysfs) -> SysfsTree:
    return sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)


def mdev_group_path(uuid: str, sysfs="/", devdir: str | None = None) -> str:
    """``/dev/vfio/N`` of an mdev's IOMMU group.  ``sysfs``: a
    :class:`~vfio.sysfs.SysfsTree` or the root directory.  Raises
    :class:`~vfio.errors.VfioError`: ENODEV no such mdev, ENOENT no group or no node."""
    uuid = normalize_uuid(uuid)
    tree = _tree(sysfs)
    rel = f"{MDEV_DEVICES}/{uuid}"
    if not tree.exists(rel):
        raise VfioError(errno.ENODEV, f"mdev {uuid}: no {tree.shown(rel)}")
    group = tree.link_name(f"{rel}/iommu_group")
    if group is None:
        raise VfioError(errno.ENOENT, f"IOMMU group of mdev {uuid} ({tree.shown(rel + '/iommu_group')}): none "
                                      "(the parent driver has not registered it with VFIO)")
    node = os.path.join(devdir if devdir is not None else tree.dev("vfio"), group)
    if not os.path.exists(node):
        raise VfioError(errno.ENOENT, f"group {group} of mdev {uuid}: no {node}")
    return node


def mdev_cdev_path(uuid: str, sysfs="/", devdir: str | None = None) -> str:
    """``/dev/vfio/devices/vfioN`` of an mdev, from its ``vfio-dev/vfioN`` entry.
    Raises :class:`~vfio.errors.VfioError`: ENODEV no such mdev, ENOENT no cdev
    (a kernel without CONFIG_VFIO_DEVICE_CDEV)."""
    uuid = normalize_uuid(uuid)
    tree = _tree(sysfs)
    rel = f"{MDEV_DEVICES}/{uuid}"
    if not tree.exists(rel):
        raise VfioError(errno.ENODEV, f"mdev {uuid}: no {tree.shown(rel)}")
    found = [n for n in tree.listdir(f"{rel}/vfio-dev") if n.startswith("vfio")]
    if not found:
        raise VfioError(errno.ENOENT, f"VFIO cdev of mdev {uuid}: no {tree.shown(rel + '/vfio-dev')} "
                                      "(the kernel lacks CONFIG_VFIO_DEVICE_CDEV)")
    return os.path.join(devdir if devdir is not None else tree.dev("vfio/devices"), found[0])


def mdev_device_api(uuid: str, sysfs="/"):
    """The ``device_api`` of an mdev's type (a :class:`DeviceApi`, the kernel's text
    for one unknown here, or None when its type does not say)."""
    uuid = normalize_uuid(uuid)
    tree = _tree(sysfs)
    return _device_api(tree.read_optional(f"{MDEV_DEVICES}/{uuid}/mdev_type/device_api"))


# ---------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------

class MdevHost:
    """mdev parents, types and devices of the system under a root, and the changes:
    :meth:`create`, :meth:`remove`.  ``sysfs``: a :class:`~vfio.host.sysfs.Sysfs`
    (a :class:`~vfio.host.sysfs.DryRunSysfs` records the writes instead)."""

    def __init__(self, root: str = "/", sysfs: Sysfs | None = None):
        self.sysfs = sysfs if sysfs is not None else Sysfs(root)
        self.root = self.sysfs.root

    @property
    def live(self) -> bool:
        return self.root == "/"

    # ---- parents and types ---------------------------------------------------------
    def parent_names(self) -> list[str]:
        return self.sysfs.listdir(MDEV_BUS_CLASS)

    def parent(self, name: str) -> MdevParent:
        """One parent.  Raises :class:`MdevNotFound` naming the known parents."""
        s = self.sysfs
        rel = f"{MDEV_BUS_CLASS}/{name}"
        if not name or "/" in name or name in (".", "..") or not s.exists(rel):
            known = ", ".join(self.parent_names()) or "none: is an mdev parent driver loaded?"
            raise MdevNotFound(f"no mdev parent {name!r} ({s.shown(rel)} does not exist; parents: {known})",
                               errno=errno.ENODEV)
        real = s.real(rel)
        types = tuple(self._type(name, real, t) for t in s.listdir(f"{real}/{TYPES_DIR}"))
        return MdevParent(name, real, types)

    def _type(self, parent: str, parent_dir: str, type_id: str) -> MdevType:
        s = self.sysfs
        rel = f"{parent_dir}/{TYPES_DIR}/{type_id}"
        avail_text = s.read_optional(f"{rel}/available_instances")
        try:
            avail = int(avail_text) if avail_text is not None else 0
        except ValueError:
            raise HostError(f"{s.shown(rel + '/available_instances')}: expected a number, found {avail_text!r}") from None
        return MdevType(parent=parent, type_id=type_id, name=s.read_optional(f"{rel}/name"),
                        description=s.read_optional(f"{rel}/description"),
                        device_api=_device_api(s.read_optional(f"{rel}/device_api")),
                        available_instances=avail, devices=tuple(s.listdir(f"{rel}/devices")), path=rel)

    def parents(self) -> list[MdevParent]:
        return [self.parent(n) for n in self.parent_names()]

    def types(self, parent: str | None = None) -> list[MdevType]:
        ps = [self.parent(parent)] if parent is not None else self.parents()
        return [t for p in ps for t in p.types]

    # ---- devices -----------------------------------------------------------------------
    def uuids(self) -> list[str]:
        return self.sysfs.listdir(MDEV_DEVICES)

    def exists(self, uuid: str) -> bool:
        return self.sysfs.exists(f"{MDEV_DEVICES}/{normalize_uuid(uuid)}")

    def device(self, uuid: str) -> MdevDevice:
        """The current state of one mdev.  Raises :class:`MdevNotFound` (ENODEV)."""
        uuid = normalize_uuid(uuid)
        s = self.sysfs
        rel = f"{MDEV_DEVICES}/{uuid}"
        if not s.exists(rel):
            raise MdevNotFound(f"no mdev {uuid} ({s.shown(rel)} does not exist)", errno=errno.ENODEV)
        real = s.real(rel)
        type_id = s.link_name(f"{rel}/mdev_type")
        api = None
        if type_id is not None:
            api = _device_api(s.read_optional(f"{s.real(rel + '/mdev_type')}/device_api"))
        cdevs = [n for n in s.listdir(f"{rel}/vfio-dev") if n.startswith("vfio")]
        return MdevDevice(uuid=uuid, parent=os.path.basename(os.path.dirname(real)), type_id=type_id,
                          device_api=api, iommu_group=s.link_name(f"{rel}/iommu_group"),
                          driver=s.link_name(f"{rel}/driver"), cdev=cdevs[0] if cdevs else None, path=real)

    def devices(self, parent: str | None = None) -> list[MdevDevice]:
        out = [self.device(u) for u in self.uuids()]
        return [d for d in out if parent is None or d.parent == parent]

    # ---- is it open? -----------------------------------------------------------------------
    def holders(self, uuid: str) -> list[str]:
        """Who holds the mdev open, as phrases ("/dev/vfio/12 (open elsewhere)",
        "pid 321 (qemu) has /dev/vfio/devices/vfio0 open"); [] when nobody does.

        Two witnesses: the group node, which the kernel lets one file open at a
        time and refuses (EBUSY) while the group or a device cdev bound to an
        iommufd is in use; and every process's open files, for a cdev opened but
        not bound yet (an unbound cdev fd also blocks the removal).  Only on a live
        root; a captured tree has nobody to hold anything."""
        d = self.device(uuid)
        if not self.live:
            return []
        out = []
        nodes = []
        if d.iommu_group is not None:
            node = self.sysfs.dev(f"vfio/{d.iommu_group}")
            nodes.append(node)
            try:
                # a probe, closed at once: plain os.open keeps the host tools off the fd
                # layer (uapi loads ctypes, which an unprivileged CLI run may not have)
                fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                if e.errno == errno.EBUSY:
                    out.append(f"{node} (open: a group or bound cdev of it is in use)")
            else:
                os.close(fd)
        if d.cdev is not None:
            nodes.append(self.sysfs.dev(f"vfio/devices/{d.cdev}"))
        out += _processes_holding(nodes)
        return out

    # ---- changes -----------------------------------------------------------------------------
    def create(self, parent: str, type_id: str, uuid: str | None = None, attrs=()) -> str:
        """Create an mdev of ``type_id`` (the type directory's name, ``mtty-2``) on
        ``parent`` with ``uuid`` (a random one when None) and write ``attrs``
        (``(name, value)`` pairs) to its attributes; returns its UUID.

        Checked first, nothing changed when refused (:class:`MdevError`, errno as
        the kernel would say): a malformed UUID (EINVAL), an unknown parent
        (ENODEV) or type (ENOENT), a UUID in use (EEXIST), no instances left
        (EUSERS).  :class:`~vfio.errors.VfioError` (errno kept) when the kernel
        refuses the write (EACCES: not root).  When an attribute write fails the
        new mdev is removed again before the error is raised."""
        if uuid is None:
            import uuid as _uuid_mod
            uuid = str(_uuid_mod.uuid4())
        uuid = normalize_uuid(uuid)
        t = self.parent(parent).type(type_id)
        if self.exists(uuid):
            other = self.device(uuid)
            raise MdevError(f"mdev UUID {uuid} is in use (by a {other.type_id} mdev of {other.parent}, "
                            f"{self.sysfs.shown(MDEV_DEVICES + '/' + uuid)})", errno=errno.EEXIST)
        if t.available_instances <= 0:
            raise MdevError(f"mdev type {t.type_id} of {parent}: no instances left "
                            f"({self.sysfs.shown(t.path + '/available_instances')} is 0; "
                            f"{len(t.devices)} in use)", errno=errno.EUSERS)
        try:
            self.sysfs.write(f"{t.path}/create", uuid)
        except VfioError as e:
            # EUSERS: the mdev core's "no instances left"; ENOSPC: mtty's (its probe runs out of ports)
            hint = {errno.EEXIST: " (the UUID is in use)", errno.EUSERS: " (no instances left)",
                    errno.ENOSPC: " (no instances left)",
                    errno.EACCES: " (creating an mdev needs root)", errno.EPERM: " (creating an mdev needs root)",
                    }.get(e.errno, "")
            raise VfioError(e.errno, f"creating mdev {uuid} of type {t.type_id} on {parent}: {e.strerror}{hint}"
                            f" ({self.sysfs.shown(t.path + '/create')})") from None
        if isinstance(self.sysfs, DryRunSysfs):
            for name, value in attrs:
                self.sysfs.write(f"{MDEV_DEVICES}/{uuid}/{_attr_name(name)}", str(value))
            return uuid
        try:
            for name, value in attrs:
                self.sysfs.write(f"{MDEV_DEVICES}/{uuid}/{_attr_name(name)}", str(value))
        except BaseException:
            try:
                self.sysfs.write(f"{MDEV_DEVICES}/{uuid}/remove", "1")
            except OSError:
                pass            # the attribute's error is the one to report; the mdev is named in it
            raise
        return uuid

    def remove(self, uuid: str, force: bool = False) -> None:
        """Remove an mdev (write ``1`` to its ``remove``).

        Refused with :class:`MdevInUse` (EBUSY) while it is open (see
        :meth:`holders`): the kernel would block the writer until it is closed.
        ``force`` writes anyway (and waits).  Raises :class:`MdevNotFound`
        (ENODEV) when there is no such mdev, :class:`~vfio.errors.VfioError` when
        the kernel refuses the write (EACCES: not root)."""
        d = self.device(uuid)
        if not force:
            held = self.holders(d.uuid)
            if held:
                raise MdevInUse(f"mdev {d.uuid} ({d.type_id} of {d.parent}) is open: {'; '.join(held)}; "
                                "removing it would block until it is closed (close it first)")
        rel = f"{MDEV_DEVICES}/{d.uuid}/remove"
        try:
            self.sysfs.write(rel, "1")
        except VfioError as e:
            hint = " (removing an mdev needs root)" if e.errno in (errno.EACCES, errno.EPERM) else ""
            raise VfioError(e.errno, f"removing mdev {d.uuid}: {e.strerror}{hint} ({self.sysfs.shown(rel)})") from None


def _attr_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..", "remove"):
        raise MdevError(f"mdev attribute name {name!r} is not an attribute of the device")
    return name


def _processes_holding(nodes: list[str]) -> list[str]:
    """``pid N (comm) has NODE open`` for every process with one of ``nodes`` open
    (those this process may look at: all of them as root)."""
    if not nodes:
        return []
    want = set(nodes)
    out = []
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return []
    for pid in pids[:65536]:
        fddir = f"/proc/{pid}/fd"
        try:
            fds = os.listdir(fddir)
        except OSError:
            continue            # gone, or not ours to look at
        for fd in fds[:65536]:
            try:
                target = os.readlink(f"{fddir}/{fd}")
            except OSError:
                continue
            if target in want:
                try:
                    with open(f"/proc/{pid}/comm") as f:
                        comm = f.read().strip()
                except OSError:
                    comm = "?"
                out.append(f"pid {pid} ({comm}) has {target} open")
                break
    return out


# ---------------------------------------------------------------------------------------
# Definitions (mdevctl's configuration files)
# ---------------------------------------------------------------------------------------

def config_dir_for(root: str = "/", given: str | None = None) -> str:
    """The definitions directory: ``given``, else ``$VFIO_MDEV_CONFIG_DIR``, else
    ``ROOT/etc/vfio-toolkit/mdev.d``."""
    if given:
        return given
    env = os.environ.get(CONFIG_DIR_ENV)
    if env:
        return env
    return os.path.join(os.path.abspath(root), DEFAULT_CONFIG_DIR)


class Definitions:
    """The saved mdevs of a configuration directory (``DIR/PARENT/UUID``, mdevctl's layout)."""

    def __init__(self, directory: str):
        self.dir = directory

    def _file(self, parent: str, uuid: str) -> str:
        if not parent or "/" in parent or parent in (".", ".."):
            raise MdevError(f"mdev parent name {parent!r} cannot name a definition directory")
        return os.path.join(self.dir, parent, uuid)

    def _read(self, parent: str, uuid: str) -> MdevDefinition:
        import json
        path = self._file(parent, uuid)
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_DEFINITION_BYTES + 1)
        except OSError as e:
            from ..errors import wrap_oserror
            raise wrap_oserror(e, f"reading mdev definition {path}") from None
        if len(raw) > MAX_DEFINITION_BYTES:
            raise MdevError(f"mdev definition {path}: larger than {MAX_DEFINITION_BYTES} bytes")
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as e:
            raise MdevError(f"mdev definition {path}: not JSON: {e}") from None
        if not isinstance(doc, dict) or not isinstance(doc.get("mdev_type"), str) or not doc["mdev_type"]:
            raise MdevError(f"mdev definition {path}: expected an object with a string \"mdev_type\"")
        try:
            start = StartPolicy(doc.get("start", "manual"))
        except ValueError:
            raise MdevError(f"mdev definition {path}: \"start\" is {doc.get('start')!r}, "
                            "expected \"auto\" or \"manual\"") from None
        attrs = doc.get("attrs", [])
        pairs = []
        if not isinstance(attrs, list):
            raise MdevError(f"mdev definition {path}: \"attrs\" must be a list of {{name: value}} objects")
        for i, a in enumerate(attrs):
            if not isinstance(a, dict) or len(a) != 1:
                raise MdevError(f"mdev definition {path}: attrs[{i}] must be one {{name: value}} object")
            (k, v), = a.items()
            if not isinstance(v, (str, int)) or isinstance(v, bool):
                raise MdevError(f"mdev definition {path}: attrs[{i}] value of {k!r} must be a string")
            try:
                pairs.append((_attr_name(k), str(v)))
            except MdevError as e:
                raise MdevError(f"mdev definition {path}: attrs[{i}]: {e}") from None
        return MdevDefinition(uuid.lower(), parent, doc["mdev_type"], start, tuple(pairs), path)

    def all(self) -> list[MdevDefinition]:
        """Every definition, by parent then UUID.  A file whose name is not a UUID is
        not a definition (mdevctl's rule) and is passed over; a malformed one raises."""
        out = []
        try:
            parents = sorted(os.listdir(self.dir))
        except FileNotFoundError:
            return []
        except OSError as e:
            from ..errors import wrap_oserror
            raise wrap_oserror(e, f"listing mdev definitions {self.dir}") from None
        for p in parents:
            pdir = os.path.join(self.dir, p)
            if not os.path.isdir(pdir):
                continue
            for name in sorted(os.listdir(pdir))[:65536]:
                if _UUID_RE.match(name):
                    out.append(self._read(p, name))
        return out

    def find(self, uuid: str, parent: str | None = None) -> list[MdevDefinition]:
        uuid = normalize_uuid(uuid)
        return [d for d in self.all() if d.uuid.lower() == uuid and (parent is None or d.parent == parent)]

    def get(self, uuid: str, parent: str | None = None) -> MdevDefinition:
        """The one definition of ``uuid``.  Raises :class:`MdevNotFound`, or
        :class:`MdevError` when it is defined on several parents and none is named."""
        found = self.find(uuid, parent)
        if not found:
            where = f" on parent {parent}" if parent else ""
            raise MdevNotFound(f"no mdev definition {normalize_uuid(uuid)}{where} in {self.dir}", errno=errno.ENOENT)
        if len(found) > 1:
            raise MdevError(f"mdev {normalize_uuid(uuid)} is defined on several parents "
                            f"({', '.join(d.parent for d in found)}): name one with --parent")
        return found[0]

    def save(self, d: MdevDefinition, replace: bool = False) -> str:
        """Write a definition (atomically: a temporary file renamed over it); returns
        its path.  Refuses (:class:`MdevError`, EEXIST) to replace one unless ``replace``."""
        import json
        path = self._file(d.parent, d.uuid)
        if not replace and self.find(d.uuid):
            raise MdevError(f"mdev {d.uuid} is already defined ({self.get(d.uuid).path})", errno=errno.EEXIST)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.tmp{os.getpid()}"
            with open(tmp, "w") as f:
                json.dump(d.to_json(), f, indent=2)
                f.write("\n")
            os.replace(tmp, path)
        except OSError as e:
            from ..errors import wrap_oserror
            raise wrap_oserror(e, f"writing mdev definition {path}") from None
        return path

    def delete(self, d: MdevDefinition) -> None:
        path = self._file(d.parent, d.uuid)
        try:
            os.unlink(path)
        except OSError as e:
            from ..errors import wrap_oserror
            raise wrap_oserror(e, f"removing mdev definition {path}") from None
        try:
            os.rmdir(os.path.dirname(path))     # the parent's directory, when it was its last
        except OSError:
            pass


# ---------------------------------------------------------------------------------------
# Short forms
# ---------------------------------------------------------------------------------------

def create_mdev(parent: str, mdev_type: str, uuid: str | None = None, *, root: str = "/", attrs=()) -> str:
    """Create an mdev of type ``mdev_type`` (``mtty-2``) on ``parent`` (``mtty``);
    returns its UUID.  See :meth:`MdevHost.create` for what is refused and raised."""
    return MdevHost(root).create(parent, mdev_type, uuid, attrs)


def remove_mdev(uuid: str, *, root: str = "/", force: bool = False) -> None:
    """Remove an mdev; refused with :class:`MdevInUse` (EBUSY) while it is open.
    See :meth:`MdevHost.remove`."""
    MdevHost(root).remove(uuid, force=force)
