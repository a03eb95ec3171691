"""Group viability: can this IOMMU group be handed to userspace right now?

The IOMMU isolates groups, not devices, so VFIO gives out a group only when no
kernel driver in it may still be doing DMA of its own.  Since Linux 6.0 the
kernel decides this through DMA ownership (``iommu_group_dma_owner_claimed``):
a group is viable when every device in it is

* bound to no driver, or
* bound to a driver that declares ``driver_managed_dma`` -- vfio-pci and its
  variant drivers, ``pci-stub`` (binds and does nothing) and ``pcieport``
  (bridges: they do no DMA of their own).

That list is :data:`DMA_SAFE_DRIVERS`, taken from the 6.12 sources.

A group can hold devices that are not PCI functions, and the kernel counts
them by the same rule, applied where the bus does it: the buses whose
``dma_configure`` claims DMA ownership for a bound driver (platform, AMBA,
fsl-mc, CDX, as PCI does: ``iommu_device_use_default_domain`` unless the
driver sets ``driver_managed_dma``) make a member on any other driver a
blocker, so a platform device is fine on ``vfio-platform`` or no driver and
blocks on its own driver (:data:`DT_DMA_SAFE_DRIVERS`).  Other buses claim
nothing: a mediated device (``mdev``) never blocks, whatever its driver
(VFIO puts it alone in a group it makes for it).  It can only be a
prediction: once the group is open, ``VFIO_GROUP_GET_STATUS``
(:attr:`vfio.group.Group.viable`) is the kernel's own answer, and
:func:`group_viability` uses it whenever it can open ``/dev/vfio/N``.
"""

from __future__ import annotations

import errno
import os

from .._value import Value
from ..errors import InvalidValue
from .sysfs import IOMMU_GROUPS, Host, IommuGroup, PciDevice

#: Drivers with ``.driver_managed_dma = true`` in Linux 6.12
#: (``grep -rn driver_managed_dma drivers/``); variant drivers use KBUILD_MODNAME.
VFIO_PCI_DRIVERS = frozenset({
    "vfio-pci", "hisi_acc_vfio_pci", "mlx5_vfio_pci", "nvgrace_gpu_vfio_pci",
    "pds_vfio_pci", "qat_vfio_pci", "virtio_vfio_pci",
})
DMA_SAFE_DRIVERS = VFIO_PCI_DRIVERS | {"pci-stub", "pcieport"}
#: The same for the non-PCI buses that claim DMA ownership (``dma_configure`` in
#: drivers/base/platform.c, drivers/amba/bus.c, drivers/bus/fsl-mc, drivers/cdx):
#: their drivers with ``driver_managed_dma`` in Linux 6.12.
DT_DMA_SAFE_DRIVERS = frozenset({"vfio-platform", "vfio-amba", "vfio-fsl-mc", "vfio-cdx", "fsl-pci"})
#: Buses whose bound drivers claim DMA ownership of the group (besides pci).
DMA_OWNING_BUSES = frozenset({"platform", "amba", "fsl-mc", "cdx"})
#: Where a member's bus is looked for when its ``subsystem`` link is missing (captured trees).
_KNOWN_BUSES = ("platform", "amba", "mdev", "fsl-mc", "cdx")


class MemberStatus(Value):
    """One device of a group and whether it stands in the way of viability."""
    bdf: str
    driver: str | None
    ok: bool
    reason: str

    def __init__(self, bdf: str, driver: str | None, ok: bool, reason: str):
        self.__dict__.update(bdf=bdf, driver=driver, ok=ok, reason=reason)


class Viability(Value):
    """The verdict on one group."""
    group: str
    viable: bool
    members: tuple              # of MemberStatus
    source: str                 # "sysfs" (predicted from drivers) or "kernel" (VFIO_GROUP_GET_STATUS)
    kernel_flags: int | None
    note: str                   # why the kernel could not be asked, when it could not

    def __init__(self, group: str, viable: bool, members: tuple = (), source: str = "sysfs",
                 kernel_flags: int | None = None, note: str = ""):
        self.__dict__.update(group=group, viable=viable, members=members, source=source,
                             kernel_flags=kernel_flags, note=note)

    @property
    def blockers(self) -> list[MemberStatus]:
        return [m for m in self.members if not m.ok]

    def why_not(self) -> str:
        """One line naming the devices that make the group not viable ('' if viable)."""
        if self.viable:
            return ""
        if self.blockers:
            return "; ".join(m.reason for m in self.blockers)
        return "the kernel reports the group not viable (VFIO_GROUP_GET_STATUS)"


def member_status(dev: PciDevice) -> MemberStatus:
    if dev.driver is None:
        return MemberStatus(dev.bdf, None, True, f"{dev.bdf} has no driver")
    if dev.driver in DMA_SAFE_DRIVERS:
        return MemberStatus(dev.bdf, dev.driver, True, f"{dev.bdf} is on {dev.driver}")
    return MemberStatus(dev.bdf, dev.driver, False,
                        f"{dev.bdf} is bound to {dev.driver} (a kernel driver that owns its DMA)")


def _bus_of(host: Host, group: str, name: str) -> str | None:
    rel = f"{IOMMU_GROUPS}/{group}/devices/{name}"
    bus = host.sysfs.link_name(f"{rel}/subsystem")
    if bus is not None:
        return bus
    return next((b for b in _KNOWN_BUSES if host.sysfs.exists(f"sys/bus/{b}/devices/{name}")), None)


def other_member_status(host: Host, group: str, name: str) -> MemberStatus:
    """A member that is not a PCI function (``IommuGroup.others``), judged by its
    bus's rule (see the module text)."""
    rel = f"{IOMMU_GROUPS}/{group}/devices/{name}"
    driver = host.sysfs.link_name(f"{rel}/driver")
    bus = _bus_of(host, group, name)
    if bus is None:
        # a member whose bus cannot be told: its driver may claim the group, as the kernel would say
        ok = driver is None
        return MemberStatus(name, driver, ok, f"{name} has no driver" if ok else
                            f"{name} is bound to {driver} on a bus that cannot be told "
                            f"(no {host.sysfs.shown(rel + '/subsystem')}): counted as owning its DMA")
    if bus not in DMA_OWNING_BUSES:
        return MemberStatus(name, driver, True, f"{name} is on the {bus} bus"
                            + (f" ({driver})" if driver else "") + ", which claims no DMA ownership")
    if driver is None:
        return MemberStatus(name, None, True, f"{name} ({bus}) has no driver")
    if driver in DT_DMA_SAFE_DRIVERS:
        return MemberStatus(name, driver, True, f"{name} ({bus}) is on {driver}")
    return MemberStatus(name, driver, False,
                        f"{name} ({bus}) is bound to {driver} (a kernel driver that owns its DMA)")


def predict(group: IommuGroup, host: Host | None = None) -> Viability:
    """Viability from the drivers sysfs shows (no system call beyond reading files).

    Members that are not PCI functions (``group.others``) are judged from
    ``host``'s sysfs; raises :class:`~vfio.errors.InvalidValue` when the group
    has such members and no ``host`` is given (the verdict would be a guess)."""
    members = tuple(member_status(d) for d in group.devices)
    if group.others:
        if host is None:
            raise InvalidValue(f"IOMMU group {group.number} also holds {', '.join(group.others)} (not PCI "
                               "functions): predict() needs the host to read their drivers")
        members += tuple(other_member_status(host, group.number, n) for n in group.others)
    return Viability(group.number, all(m.ok for m in members), members)


def group_viability(host: Host, group: IommuGroup, ask_kernel: bool = True) -> Viability:
    """The kernel's answer when ``/dev/vfio/N`` can be opened, else the prediction.

    A group node exists only while some device of the group is bound to a VFIO
    driver; it can be opened by one process at a time (EBUSY when a VMM holds
    it) and needs permission.  When the kernel cannot be asked the prediction
    is returned with ``note`` saying why.
    """
    pred = predict(group, host)
    if not ask_kernel:
        return pred
    node = None
    for name in (group.number, f"noiommu-{group.number}"):
        if os.path.exists(host.sysfs.path(f"dev/vfio/{name}")):
            node = host.sysfs.path(f"dev/vfio/{name}")
            break
    if node is None:
        return pred
    if host.root != "/":
        # A captured tree: its nodes are placeholders, there is no kernel to ask.
        return Viability(pred.group, pred.viable, pred.members, note="captured tree: kernel not asked")
    from ..group import Group
    try:
        with Group(node) as g:
            flags = g.status()
    except OSError as e:
        why = {errno.EBUSY: "group open elsewhere", errno.EACCES: "no permission on the group node",
               errno.EPERM: "no permission on the group node"}.get(e.errno, os.strerror(e.errno or errno.EIO))
        return Viability(pred.group, pred.viable, pred.members, note=f"kernel not asked: {why}")
    from .. import uapi
    viable = bool(flags & uapi.VFIO_GROUP_FLAGS_VIABLE)
    return Viability(pred.group, viable, pred.members, source="kernel", kernel_flags=flags)
