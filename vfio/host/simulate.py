"""A captured sysfs tree that reacts to driver writes like the kernel (a simulation).

Assignment is a sequence of writes to ``driver_override``, ``drivers/X/unbind``,
``drivers/X/bind`` and ``drivers_probe``.  To test it (and its rollback after
a failure at every step) without hardware, :class:`SimulatedSysfs` applies
those writes to a *writable copy* of a tree from ``fixtures/sysfs/`` with the
rules of ``drivers/base/bus.c`` and ``drivers/pci/pci-driver.c`` (6.12):

* ``driver_override``: the text without its newline; empty clears it (reads
  back ``(null)``).
* ``drivers/X/unbind BDF``: ENODEV unless the device is bound to X.
* ``drivers/X/bind BDF``: ENODEV unless X matches the device -- its override
  names X, or it has no override and X is one of its "native" drivers;
  EBUSY when the device already has a driver.
* ``drivers_probe BDF``: if the device has no driver, bind the override
  driver when set (or nothing when that driver is not loaded), else the first
  native driver that is loaded; ENODEV for an unknown device.
* Binding a device to vfio-pci creates ``dev/vfio/N`` for its group and the
  device's ``vfio-dev/vfioK`` directory (and, when the tree has
  ``dev/vfio/devices``, the cdev node ``vfioK``); unbinding undoes them.  ``modprobe vfio-pci`` creates the driver
  directory and ``dev/vfio/vfio``.

* With ``probe_groups`` (BDF -> group number), a device without a group
  joins that group when a driver binds it, as under virtio-iommu described by
  ACPI VIOT, where ``dma_configure()`` at probe time attaches the device to
  the IOMMU.  The group stays after unbind (it goes only with the device).

Native drivers (which ID tables match) cannot be known from sysfs; by default
a device's native driver is the one named by ``DRIVER=`` in its captured
``uevent`` file (unless that was a VFIO driver), which the simulation never
rewrites.  It is a simulation: the in-guest tests
(``tests/kernel/test_host_assign.py``) check the same sequences against the
real kernel.
"""

from __future__ import annotations

import errno
import os
import re

from ..errors import VfioError
from .sysfs import PCI_DEVICES, PCI_DRIVERS, Sysfs
from .viability import VFIO_PCI_DRIVERS

_DRIVER_FILES = ("bind", "unbind", "new_id", "remove_id")
_OVERRIDE = re.compile(r"^sys/bus/pci/devices/([^/]+)/driver_override$")
_BIND = re.compile(r"^sys/bus/pci/drivers/([^/]+)/(bind|unbind)$")


class SimulatedSysfs(Sysfs):
    """See the module docstring.  ``native`` maps BDF -> drivers whose ID table matches."""

    def __init__(self, root: str, native: dict | None = None, probe_groups: dict | None = None):
        super().__init__(root)
        self.probe_groups = dict(probe_groups or {})
        self.writes: list[tuple[str, str]] = []       # (shown path, value), in order
        self.owners: dict[str, tuple[int, int]] = {}  # chown is recorded, not done
        self.modprobed: list[str] = []
        self._vfio_devs = 0
        if native is None:
            native = {}
            for bdf in self.listdir(PCI_DEVICES):
                # the capture's uevent keeps DRIVER= as it was then; the simulation never rewrites it
                uevent = self.read_optional(f"{PCI_DEVICES}/{bdf}/uevent") or ""
                drv = dict(ln.split("=", 1) for ln in uevent.splitlines() if "=" in ln).get("DRIVER")
                if drv and drv not in VFIO_PCI_DRIVERS and drv != "pci-stub":
                    native[bdf] = [drv]
        self.native = {k: list(v) for k, v in native.items()}

    # ---- kernel state helpers ----------------------------------------------------
    def _fail(self, err: int, rel: str, value: str):
        raise VfioError(err, f"writing {value.strip()!r} to {self.shown(rel)}")

    def _dev_rel(self, bdf: str) -> str:
        return f"{PCI_DEVICES}/{bdf}"

    def _driver_of(self, bdf: str) -> str | None:
        return self.link_name(f"{self._dev_rel(bdf)}/driver")

    def _override_of(self, bdf: str) -> str | None:
        v = self.read_optional(f"{self._dev_rel(bdf)}/driver_override")
        return None if v in (None, "", "(null)") else v

    def _attach(self, drv: str, bdf: str) -> None:
        dev_real = self.path(self.real(self._dev_rel(bdf)))
        drv_dir = self.path(f"{PCI_DRIVERS}/{drv}")
        os.symlink(os.path.relpath(drv_dir, dev_real), os.path.join(dev_real, "driver"))
        os.symlink(os.path.relpath(dev_real, drv_dir), os.path.join(drv_dir, bdf))
        if bdf in self.probe_groups and self.link_name(f"{self._dev_rel(bdf)}/iommu_group") is None:
            gdir = self.path(f"sys/kernel/iommu_groups/{self.probe_groups[bdf]}")
            os.makedirs(os.path.join(gdir, "devices"), exist_ok=True)
            os.symlink(os.path.relpath(dev_real, os.path.join(gdir, "devices")), os.path.join(gdir, "devices", bdf))
            os.symlink(os.path.relpath(gdir, dev_real), os.path.join(dev_real, "iommu_group"))
        if drv in VFIO_PCI_DRIVERS:
            group = self.link_name(f"{self._dev_rel(bdf)}/iommu_group")
            if group is not None:
                os.makedirs(self.path("dev/vfio"), exist_ok=True)
                open(self.path(f"dev/vfio/{group}"), "a").close()
            # every 6.x kernel lists vfio-dev/vfioK in sysfs; only a VFIO_DEVICE_CDEV
            # kernel (a tree with dev/vfio/devices) also makes the node
            name = f"vfio{self._vfio_devs}"
            self._vfio_devs += 1
            os.makedirs(os.path.join(dev_real, "vfio-dev", name))
            if self.exists("dev/vfio/devices"):
                open(self.path(f"dev/vfio/devices/{name}"), "a").close()

    def _detach(self, drv: str, bdf: str) -> None:
        dev_real = self.path(self.real(self._dev_rel(bdf)))
        os.unlink(os.path.join(dev_real, "driver"))
        for name in self.listdir(self.real(f"{self._dev_rel(bdf)}/vfio-dev")):
            os.rmdir(os.path.join(dev_real, "vfio-dev", name))
            if self.exists(f"dev/vfio/devices/{name}"):
                os.unlink(self.path(f"dev/vfio/devices/{name}"))
        if os.path.isdir(os.path.join(dev_real, "vfio-dev")):
            os.rmdir(os.path.join(dev_real, "vfio-dev"))
        os.unlink(self.path(f"{PCI_DRIVERS}/{drv}/{bdf}"))
        group = self.link_name(f"{self._dev_rel(bdf)}/iommu_group")
        if drv in VFIO_PCI_DRIVERS and group is not None:
            members = self.listdir(f"sys/kernel/iommu_groups/{group}/devices")
            if not any(self._driver_of(b) in VFIO_PCI_DRIVERS for b in members):
                node = self.path(f"dev/vfio/{group}")
                if os.path.exists(node):
                    os.unlink(node)

    def _matches(self, drv: str, bdf: str) -> bool:
        override = self._override_of(bdf)
        if override is not None:
            return override == drv
        return drv in self.native.get(bdf, [])

    # ---- the writes ------------------------------------------------------------
    def write(self, rel: str, value: str) -> None:
        rel = rel.lstrip("/")
        self.writes.append((self.shown(rel), value))
        v = value.strip()
        m = _OVERRIDE.match(rel)
        if m:
            if not self.exists(rel):
                self._fail(errno.ENOENT, rel, value)
            with open(self.path(rel), "w") as f:
                f.write((v or "(null)") + "\n")
            return
        if rel == "sys/bus/pci/drivers_probe":
            if not self.exists(self._dev_rel(v)):
                self._fail(errno.ENODEV, rel, value)
            if self._driver_of(v) is not None:
                return
            override = self._override_of(v)
            candidates = [override] if override is not None else self.native.get(v, [])
            for drv in candidates:
                if self.exists(f"{PCI_DRIVERS}/{drv}"):
                    self._attach(drv, v)
                    return
            return
        m = _BIND.match(rel)
        if m:
            drv, op = m.groups()
            if not self.exists(f"{PCI_DRIVERS}/{drv}") or not self.exists(self._dev_rel(v)):
                self._fail(errno.ENODEV, rel, value)
            current = self._driver_of(v)
            if op == "unbind":
                if current != drv:
                    self._fail(errno.ENODEV, rel, value)
                self._detach(drv, v)
                return
            if not self._matches(drv, v):
                self._fail(errno.ENODEV, rel, value)
            if current is not None:
                self._fail(errno.EBUSY, rel, value)
            self._attach(drv, v)
            return
        self._fail(errno.EACCES, rel, value + " (not modelled by the simulation)")

    def chown(self, rel: str, uid: int, gid: int) -> None:
        if not self.exists(rel):
            raise VfioError(errno.ENOENT, f"chown {uid}:{gid} {self.shown(rel)}")
        self.owners[self.shown(rel)] = (uid, gid)

    def modprobe(self, module: str) -> None:
        self.modprobed.append(module)
        name = {"vfio_pci": "vfio-pci"}.get(module, module)
        known = {d for ds in self.native.values() for d in ds} | {"vfio-pci", "pci-stub"}
        if name not in known:
            raise VfioError(errno.ENOENT, f"modprobe {module}: module not found (simulation)")
        base = self.path(f"{PCI_DRIVERS}/{name}")
        os.makedirs(base, exist_ok=True)
        for f in _DRIVER_FILES:
            open(os.path.join(base, f), "a").close()
        if name == "vfio-pci":
            os.makedirs(self.path("dev/vfio"), exist_ok=True)
            open(self.path("dev/vfio/vfio"), "a").close()


class FaultyWrites(Sysfs):
    """Wraps another :class:`Sysfs` (simulated or real) so that its ``fail_at``-th
    write fails once: before the kernel acts (``after`` False) or after it acted
    (``after`` True, as when a process dies between the write and its
    bookkeeping).  Later writes -- the rollback -- go through.  ``writes`` lists
    every write asked for, as (root-relative path, value)."""

    def __init__(self, inner: Sysfs, fail_at: int, after: bool = False):
        super().__init__(inner.root)
        self.inner, self.fail_at, self.after = inner, fail_at, after
        self.n = 0
        self.writes: list[tuple[str, str]] = []

    def write(self, rel: str, value: str) -> None:
        self.n += 1
        self.writes.append((rel, value))
        if self.n == self.fail_at:
            if self.after:
                self.inner.write(rel, value)
            raise VfioError(errno.EIO, f"injected fault at write {self.n} ({self.shown(rel)})")
        self.inner.write(rel, value)

    def chown(self, rel: str, uid: int, gid: int) -> None:
        self.inner.chown(rel, uid, gid)

    def modprobe(self, module: str) -> None:
        self.inner.modprobe(module)
