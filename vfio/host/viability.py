"""Group viability: can this IOMMU group be handed to userspace right now?

The IOMMU isolates groups, not devices, so VFIO gives out a group only when no
kernel driver in it may still be doing DMA of its own.  Since Linux 6.0 the
kernel decides this through DMA ownership (``iommu_group_dma_owner_claimed``):
a group is viable when every device in it is

* bound to no driver, or
* bound to a driver that declares ``driver_managed_dma`` -- vfio-pci and its
  variant drivers, ``pci-stub`` (binds and does nothing) and ``pcieport``
  (bridges: they do no DMA of their own).

That list is :data:`DMA_SAFE_DRIVERS`, taken from the 6.12 sources.  It can
only be a prediction: once the group is open, ``VFIO_GROUP_GET_STATUS``
(:attr:`vfio.group.Group.viable`) is the kernel's own answer, and
:func:`group_viability` uses it whenever it can open ``/dev/vfio/N``.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field

from .sysfs import Host, IommuGroup, PciDevice

#: Drivers with ``.driver_managed_dma = true`` in Linux 6.12
#: (``grep -rn driver_managed_dma drivers/``); variant drivers use KBUILD_MODNAME.
VFIO_PCI_DRIVERS = frozenset({
    "vfio-pci", "hisi_acc_vfio_pci", "mlx5_vfio_pci", "nvgrace_gpu_vfio_pci",
    "pds_vfio_pci", "qat_vfio_pci", "virtio_vfio_pci",
})
DMA_SAFE_DRIVERS = VFIO_PCI_DRIVERS | {"pci-stub", "pcieport"}


@dataclass(frozen=True)
class MemberStatus:
    """One device of a group and whether it stands in the way of viability."""
    bdf: str
    driver: str | None
    ok: bool
    reason: str


@dataclass(frozen=True)
class Viability:
    """The verdict on one group."""
    group: str
    viable: bool
    members: tuple = field(default_factory=tuple)   # of MemberStatus
    source: str = "sysfs"       # "sysfs" (predicted from drivers) or "kernel" (VFIO_GROUP_GET_STATUS)
    kernel_flags: int | None = None
    note: str = ""              # why the kernel could not be asked, when it could not

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


def predict(group: IommuGroup) -> Viability:
    """Viability from the drivers sysfs shows (no system call beyond reading files)."""
    members = tuple(member_status(d) for d in group.devices)
    return Viability(group.number, all(m.ok for m in members), members)


def group_viability(host: Host, group: IommuGroup, ask_kernel: bool = True) -> Viability:
    """The kernel's answer when ``/dev/vfio/N`` can be opened, else the prediction.

    A group node exists only while some device of the group is bound to a VFIO
    driver; it can be opened by one process at a time (EBUSY when a VMM holds
    it) and needs permission.  When the kernel cannot be asked the prediction
    is returned with ``note`` saying why.
    """
    pred = predict(group)
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
