"""Platform devices: VFIO for devices a device tree describes.

On Arm and other device-tree machines most devices are not on a bus that can
be enumerated: the firmware's device tree names each one by a node (e.g.
``/virtio_mmio@a000000``) whose ``reg`` property lists its register windows
and whose ``interrupts`` property its interrupt lines.  Linux makes a
*platform device* of such a node (``/sys/bus/platform/devices/a000000.virtio_mmio``),
or an *AMBA device* for an Arm PrimeCell peripheral, which identifies itself by
ID registers at the top of its page (``/sys/bus/amba/devices/9010000.pl031``).
Both link back to their node through ``of_node``.

``vfio-platform`` and ``vfio-amba`` hand such devices to user space with the
same device fd as vfio-pci: ``VFIO_DEVICE_GET_INFO`` says
``VFIO_DEVICE_FLAGS_PLATFORM`` (or ``..._AMBA``), region *i* is the device's
*i*-th memory (or I/O port) resource at fd offset ``i << 40``, and IRQ index
*i* is its *i*-th interrupt, one vector each: a level-triggered line is
``MASKABLE | AUTOMASKED`` (the kernel masks it when it fires, the user
unmasks it, e.g. through an unmask eventfd), an edge-triggered one is not
maskable.  Because the kernel builds those resources in property order
(``of_device_alloc``: one per ``reg`` entry, then ``platform_get_irq`` per
``interrupts`` entry; an AMBA device has ``reg`` entry 0 and its interrupts),
region *i* comes from ``reg`` entry *i* and IRQ *i* from ``interrupts`` entry
*i* of the device's node: that is the device-tree origin (:class:`DtOrigin`)
capture writes as DTPATH/DTINDEX records and replay gives back.

Opening goes through the same IOMMU contexts as PCI.  An IOMMU usually covers
a platform device only when its node has an ``iommus`` property (QEMU's
``virt`` SMMUv3 covers the PCIe bus alone), so without one the device has no
IOMMU group and vfio-platform does not bind it, unless the kernel runs in
no-IOMMU mode (``vfio.enable_unsafe_noiommu_mode=1``), which gives it a
``noiommu-N`` group.  Linux 6.12 creates no cdev for a no-IOMMU device
(``vfio_device_add`` in ``drivers/vfio/vfio.h``) and refuses
``VFIO_DEVICE_BIND_IOMMUFD`` with a negative iommufd, so such a device opens
through its group only; a device an IOMMU covers opens either way.
vfio-platform also wants a reset handler for the device unless its
``reset_required`` parameter is 0 (``vfio_platform.reset_required=0``).
"""

from __future__ import annotations

import errno
import os
import struct
from dataclasses import dataclass
from enum import Enum, IntEnum

from typing import TYPE_CHECKING

from .errors import InvalidValue, VfioError
from .sysfs import DT_BASE, SysfsTree

if TYPE_CHECKING:
    from .device import Device

# The fd layer and the record codec are imported where used: the host listing
# (vfio-inspect) reads device-tree devices through this module without them.

__all__ = ["Bus", "DtProp", "DtOrigin", "DtOrigins", "PlatformNode", "find_platform_device",
           "platform_devices", "platform_group_path", "platform_cdev_path", "open_platform_device",
           "DT_BASE"]

#: Offsets of region *i* in a vfio-platform device fd: ``i << 40`` (VFIO_PLATFORM_OFFSET_SHIFT).
PLATFORM_OFFSET_SHIFT = 40
# bounds: a device tree has a few hundred nodes, a node a few reg entries
_MAX_DEPTH = 64
_MAX_ENTRIES = 4096


class Bus(Enum):
    """The Linux bus a device-tree device sits on, and the VFIO driver for it."""
    PLATFORM = "platform"
    AMBA = "amba"

    @property
    def devices(self) -> str:
        return f"sys/bus/{self.value}/devices"

    @property
    def drivers(self) -> str:
        return f"sys/bus/{self.value}/drivers"

    @property
    def vfio_driver(self) -> str:
        return "vfio-platform" if self is Bus.PLATFORM else "vfio-amba"

    @property
    def device_flag(self) -> int:
        from . import uapi
        return uapi.VFIO_DEVICE_FLAGS_PLATFORM if self is Bus.PLATFORM else uapi.VFIO_DEVICE_FLAGS_AMBA


class DtProp(IntEnum):
    """Which device-tree property an entry comes from: the values are the record
    format's DTINDEX ``prop_type`` (records/FORMAT.md; ``vfio.record.format.DT_PROP_*``,
    which a unit test holds these to)."""
    REG = 0
    RANGES = 1
    INTERRUPTS = 2
    INTERRUPT_MAP = 3

    @property
    def property_name(self) -> str:
        return self.name.lower().replace("_", "-")


_PROP_VALUES = frozenset(p.value for p in DtProp)


@dataclass(frozen=True)
class DtOrigin:
    """Where a region or interrupt comes from: entry ``index`` of property ``prop``
    of the device-tree node ``path``."""
    path: str
    prop: "DtProp | int"        # an int for a prop_type the format does not name (kept as read)
    index: int

    @property
    def property_name(self) -> str:
        return self.prop.property_name if isinstance(self.prop, DtProp) else f"property-type-{self.prop}"

    def __str__(self) -> str:
        return f"{self.path} {self.property_name}[{self.index}]"


@dataclass(frozen=True)
class DtOrigins:
    """The device-tree origin of each region and IRQ index of a device (None where
    it has none).  Built from sysfs for a live device (:meth:`from_sysfs`) or from a
    record's DTPATH/DTINDEX sub-records (:meth:`from_record`)."""
    regions: tuple = ()
    irqs: tuple = ()

    def region(self, index: int) -> DtOrigin | None:
        return self.regions[index] if 0 <= index < len(self.regions) else None

    def irq(self, index: int) -> DtOrigin | None:
        return self.irqs[index] if 0 <= index < len(self.irqs) else None

    @classmethod
    def positional(cls, node: str, num_regions: int, num_irqs: int) -> "DtOrigins":
        """What vfio-platform and vfio-amba give: region *i* is ``reg`` entry *i*,
        IRQ *i* is ``interrupts`` entry *i* of ``node``."""
        return cls(tuple(DtOrigin(node, DtProp.REG, i) for i in range(num_regions)),
                   tuple(DtOrigin(node, DtProp.INTERRUPTS, i) for i in range(num_irqs)))

    @classmethod
    def from_record(cls, rec) -> "DtOrigins | None":
        """The origins a record's DTPATH/DTINDEX sub-records name; None when it has none.
        A region or interrupt with a DTPATH but no DTINDEX is entry 0 of ``reg`` or
        ``interrupts``, as the RFC's single-entry devices were written.  ``rec``: a
        :class:`vfio.record.format.DeviceRecord`."""
        from .record import format as F
        def of(rec_, default: DtProp) -> DtOrigin | None:
            path = next((c for c in rec_.children if type(c) is F.DtPath), None)
            if path is None:
                return None
            idx = next((c for c in rec_.children if type(c) is F.DtIndex), None)
            if idx is None:
                return DtOrigin(path.path, default, 0)
            # a prop_type the format does not name is kept as its number (FORMAT.md: "other values kept")
            prop = DtProp(idx.prop_type) if idx.prop_type in _PROP_VALUES else idx.prop_type
            return DtOrigin(path.path, prop, idx.prop_index)
        regions, irqs = rec.regions, rec.interrupts
        nreg = max(regions, default=-1) + 1
        nirq = max(irqs, default=-1) + 1
        r = tuple(of(regions[i], DtProp.REG) if i in regions else None for i in range(nreg))
        q = tuple(of(irqs[i], DtProp.INTERRUPTS) if i in irqs else None for i in range(nirq))
        if not any(r) and not any(q):
            return None
        return cls(r, q)


@dataclass(frozen=True)
class PlatformNode:
    """A device-tree device as sysfs shows it (re-read on every :func:`find_platform_device`)."""
    name: str                   # its device name, e.g. a000000.virtio_mmio
    bus: Bus
    rel: str                    # its sysfs directory, relative to the root
    dt_path: str | None         # its device-tree node, e.g. /virtio_mmio@a000000
    driver: str | None
    driver_override: str | None
    iommu_group: str | None
    compatible: tuple = ()

    @property
    def bdf(self) -> str:
        """The key host tools file it under (a PCI function's is its BDF)."""
        return self.name


def _check_name(name: str) -> str:
    if not isinstance(name, str) or not name or "/" in name or name in (".", "..") or "\0" in name:
        raise InvalidValue(f"{name!r} is not a platform device name (e.g. a000000.virtio_mmio)")
    return name


def _dt_path_of(tree: SysfsTree, rel: str) -> str | None:
    link = f"{rel}/of_node"
    if not tree.exists(link):
        return None
    real = tree.real(link)
    if real == DT_BASE:
        return "/"
    if not real.startswith(DT_BASE + "/"):
        return None
    return real[len(DT_BASE):]


def _strings(raw: bytes) -> tuple:
    return tuple(s.decode("utf-8", "replace") for s in raw.split(b"\0") if s)


def _override(raw: str | None) -> str | None:
    return None if raw in (None, "", "(null)") else raw


def find_platform_device(name: str, sysfs: SysfsTree | str = "/") -> PlatformNode:
    """The platform or AMBA device ``name``.  Raises :class:`VfioError` (ENODEV)
    naming both places looked at when there is none, :class:`InvalidValue` for a
    malformed name."""
    name = _check_name(name)
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    for bus in Bus:
        rel = f"{bus.devices}/{name}"
        if tree.is_dir(rel):
            dt = _dt_path_of(tree, rel)
            compat = ()
            if dt is not None:
                raw = tree.read_bytes(f"{DT_BASE}{dt}/compatible") if tree.exists(f"{DT_BASE}{dt}/compatible") else b""
                compat = _strings(raw)
            return PlatformNode(name, bus, rel, dt, tree.link_name(f"{rel}/driver"),
                                _override(tree.read_optional(f"{rel}/driver_override")),
                                tree.link_name(f"{rel}/iommu_group"), compat)
    raise VfioError(errno.ENODEV, f"platform device {name}: no {tree.shown(Bus.PLATFORM.devices + '/' + name)} "
                                  f"nor {tree.shown(Bus.AMBA.devices + '/' + name)}")


def platform_devices(sysfs: SysfsTree | str = "/", *, dt_only: bool = True) -> list[PlatformNode]:
    """Every platform and AMBA device (only those with a device-tree node unless
    ``dt_only`` is False), sorted by bus then name."""
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    if dt_only and not tree.exists(DT_BASE):
        return []               # an ACPI machine (x86): no device tree, nothing to look at
    out = []
    for bus in Bus:
        for n in tree.listdir(bus.devices):
            node = find_platform_device(n, tree)
            if node.dt_path is not None or not dt_only:
                out.append(node)
    return out


def _cells(tree: SysfsTree, node: str, prop: str, default: int) -> int:
    rel = f"{DT_BASE}{node.rstrip('/')}/{prop}"
    raw = tree.read_bytes(rel) if tree.exists(rel) else b""
    return struct.unpack(">I", raw[:4])[0] if len(raw) >= 4 else default


def _be_int(cells: bytes) -> int:
    return int.from_bytes(cells, "big")


def region_addresses(node: str, sysfs: SysfsTree | str = "/") -> list[int | None]:
    """The CPU physical address of each ``reg`` entry of device-tree ``node``,
    translated through the parents' ``ranges`` (an empty ``ranges`` is identity;
    a parent without one stops translation: that entry's address is None).
    Raises :class:`InvalidValue` naming the property for a malformed ``reg``."""
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    parent = os.path.dirname(node) or "/"
    ac, sc = _cells(tree, parent, "#address-cells", 2), _cells(tree, parent, "#size-cells", 1)
    rel = f"{DT_BASE}{node}/reg"
    raw = tree.read_bytes(rel) if tree.exists(rel) else b""
    step = 4 * (ac + sc)
    if not step or len(raw) % step or len(raw) // step > _MAX_ENTRIES:
        raise InvalidValue(f"{tree.shown(rel)}: {len(raw)} bytes are not whole entries of "
                           f"{ac}+{sc} cells")
    addrs = []
    for i in range(len(raw) // step):
        addrs.append(_translate(tree, parent, _be_int(raw[i * step:i * step + 4 * ac])))
    return addrs


def _translate(tree: SysfsTree, bus: str, addr: int) -> int | None:
    """``addr`` on ``bus`` as a CPU address, through each ancestor's ``ranges``."""
    for _ in range(_MAX_DEPTH):
        if bus == "/":
            return addr
        rel = f"{DT_BASE}{bus}/ranges"
        if not tree.exists(rel):
            return None
        raw = tree.read_bytes(rel)
        up = os.path.dirname(bus) or "/"
        cac, csc = _cells(tree, bus, "#address-cells", 2), _cells(tree, bus, "#size-cells", 1)
        pac = _cells(tree, up, "#address-cells", 2)
        if raw:
            step = 4 * (cac + pac + csc)
            if not step or len(raw) % step:
                return None
            for i in range(min(len(raw) // step, _MAX_ENTRIES)):
                e = raw[i * step:(i + 1) * step]
                child = _be_int(e[:4 * cac])
                par = _be_int(e[4 * cac:4 * (cac + pac)])
                size = _be_int(e[4 * (cac + pac):])
                if child <= addr < child + size:
                    addr = par + (addr - child)
                    break
            else:
                return None
        bus = up
    return None


def region_phys(node: PlatformNode, sysfs: SysfsTree | str = "/") -> list[int | None]:
    """The physical address of each region vfio-platform/vfio-amba makes of ``node``
    (an AMBA device's one region from its ``resource`` file)."""
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    if node.bus is Bus.AMBA:
        text = tree.read_optional(f"{node.rel}/resource")
        if text:
            return [int(text.split()[0], 16)]
    if node.dt_path is None:
        return []
    return region_addresses(node.dt_path, tree)


def dt_origins(node: PlatformNode, num_regions: int, num_irqs: int) -> DtOrigins | None:
    """The origins of a device's ``num_regions`` regions and ``num_irqs`` IRQs (what
    VFIO_DEVICE_GET_INFO said), or None when it has no device-tree node."""
    if node.dt_path is None:
        return None
    return DtOrigins.positional(node.dt_path, num_regions, num_irqs)


def platform_group_path(name: str, sysfs: SysfsTree | str = "/", devdir: str | None = None) -> str:
    """The ``/dev/vfio`` node of a platform device's group (N, or noiommu-N).
    Raises :class:`VfioError`: ENODEV for no such device, ENOENT when it has no
    group (no IOMMU covers it and the kernel is not in no-IOMMU mode) or no node
    (not bound to vfio-platform/vfio-amba)."""
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    node = find_platform_device(name, tree)
    if node.iommu_group is None:
        raise VfioError(errno.ENOENT, f"IOMMU group of {name} ({tree.shown(node.rel + '/iommu_group')}): "
                                      "none (no IOMMU covers it; vfio.enable_unsafe_noiommu_mode=1 gives "
                                      "it a no-IOMMU group)")
    devdir = devdir if devdir is not None else tree.dev("vfio")
    for g in (node.iommu_group, f"noiommu-{node.iommu_group}"):
        p = os.path.join(devdir, g)
        if os.path.exists(p):
            return p
    raise VfioError(errno.ENOENT, f"group {node.iommu_group} of {name}: no {os.path.join(devdir, node.iommu_group)} "
                                  f"(is it bound to {node.bus.vfio_driver}? driver: {node.driver or 'none'})")


def platform_cdev_path(name: str, sysfs: SysfsTree | str = "/", devdir: str | None = None) -> str:
    """``/dev/vfio/devices/vfioN`` of a platform device.  Raises :class:`VfioError`
    ENODEV for a no-IOMMU device (Linux makes no cdev for one: open it through its
    group) and ENOENT when it has no cdev (not bound to VFIO, or no
    CONFIG_VFIO_DEVICE_CDEV)."""
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    node = find_platform_device(name, tree)
    rel = f"{node.rel}/vfio-dev"
    # sysfs lists vfio-dev/vfioN for a no-IOMMU device too, but no node is made for it
    if node.driver == node.bus.vfio_driver and node.iommu_group is not None and \
            tree.read_optional(f"sys/kernel/iommu_groups/{node.iommu_group}/name") == "vfio-noiommu":
        raise VfioError(errno.ENODEV, f"VFIO cdev of {name}: it is a no-IOMMU device (group "
                                      f"noiommu-{node.iommu_group}), and Linux gives no-IOMMU devices no cdev "
                                      "(and refuses VFIO_DEVICE_BIND_IOMMUFD without an iommufd); open it "
                                      "through its group (interface='container')")
    found = [n for n in tree.listdir(rel) if n.startswith("vfio")]
    if found:
        return os.path.join(devdir if devdir is not None else tree.dev("vfio/devices"), found[0])
    raise VfioError(errno.ENOENT, f"VFIO cdev of {name}: no {tree.shown(rel)} (not bound to "
                                  f"{node.bus.vfio_driver}, driver: {node.driver or 'none'}, or the kernel "
                                  "lacks CONFIG_VFIO_DEVICE_CDEV)")


def open_platform_device(name: str, interface: str = "auto", container=None,
                         sysfs: SysfsTree | str = "/") -> "Device":
    """Open a platform or AMBA device bound to vfio-platform or vfio-amba, by its
    device name (``a000000.virtio_mmio``, ``9010000.pl031``), with the same
    :class:`~vfio.device.Device` API as a PCI device; its ``dt`` gives each region's
    and IRQ's device-tree origin.

    ``interface``: ``"container"`` (its group in a type1 or no-IOMMU container),
    ``"cdev"`` (``/dev/vfio/devices/vfioN`` + iommufd: only a device an IOMMU covers
    has one), or ``"auto"``: the container when the host has ``/dev/vfio/vfio``.
    ``container``: put its group in this container (or find it there), as
    :func:`vfio.open_pci_device` does.  Closing the device releases what was made
    for it, in the same order as for PCI.

    Raises :class:`VfioError` (errno kept) when the kernel refuses a step or the
    device has no group/cdev (ENODEV/ENOENT, with the reason), ``ValueError`` for a
    malformed name or interface.
    """
    from .device import Interface
    from .open import choose_interface
    tree = sysfs if isinstance(sysfs, SysfsTree) else SysfsTree(sysfs)
    node = find_platform_device(name, tree)
    if choose_interface(interface, container, tree.dev("vfio/vfio")) == Interface.CDEV:
        return _open_cdev(node, tree)
    path = platform_group_path(name, tree)
    dt = _dt_of(node)
    if container is not None:
        return container.open_device(node.name, path, dt=dt)
    from .container import Container
    made = Container()
    with made.lease(adopt=True):
        return made.open_device(node.name, path, dt=dt)


def _dt_of(node: PlatformNode):
    """The Device's ``dt`` hook: its regions' and IRQs' device-tree origins, asked
    for once VFIO_DEVICE_GET_INFO has said how many there are."""
    return lambda info: dt_origins(node, info.num_regions, info.num_irqs)


def _open_cdev(node: PlatformNode, tree: SysfsTree) -> "Device":
    from .iommufd import open_cdev_node
    return open_cdev_node(platform_cdev_path(node.name, tree), node.name, dt=_dt_of(node))
