"""Handing PCI devices to vfio-pci and giving them back, safely.

The kernel mechanism (what ``driverctl``, DPDK's ``dpdk-devbind`` and libvirt's
managed hostdev do, one way or another):

1. ``echo BDF > /sys/bus/pci/drivers/ORIG/unbind`` -- take it from its driver;
2. ``echo vfio-pci > /sys/bus/pci/devices/BDF/driver_override`` -- from now on
   only vfio-pci may bind it (affects this device only, unlike ``new_id``);
3. ``echo BDF > /sys/bus/pci/drivers_probe`` -- let the kernel bind it, which
   the override makes vfio-pci.

Giving it back is the mirror image: unbind from vfio-pci, restore the
override it had (usually none), bind the original driver.  The order is
chosen so that undoing the steps in reverse order always works: the original
driver is rebound only after the override that would forbid it is gone.

What this module adds around those writes:

* **Whole groups.**  The IOMMU isolates groups, so the group is viable only
  when every member is on vfio-pci, on a DMA-safe driver or on none
  (:mod:`vfio.host.viability`).  Companions on other drivers are assigned too
  when asked (``whole_group``); otherwise the request is refused naming them.
* **Safety.**  Devices in use (:mod:`vfio.host.inuse`: mounted disks, the root
  filesystem, configured network interfaces, the boot VGA) are refused unless
  ``force``.
* **State.**  The original driver and override of every device are recorded in
  a JSON state file *before* the first write (status ``assigning``, then
  ``assigned``), so ``release`` knows where each device goes back to even after
  a crash.  The file is only changed under an exclusive lock on
  ``STATE.lock`` and replaced atomically (write, fsync, rename), so a second
  concurrent run waits (or fails with ``wait=False``) and cannot corrupt it.
* **Rollback.**  A plan is a list of :class:`Op`; each op knows how to undo
  itself by looking at the current state (so undoing an op that failed
  half-way, or never ran, is harmless).  Any failure undoes every op started,
  in reverse order, and the error says whether that fully worked.
* **Dry run.**  :meth:`Plan.actions` are the exact writes, printed by
  ``vfio-assign --dry-run``; every change goes through
  :class:`vfio.host.sysfs.Sysfs`, the one object tests intercept.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from .inuse import usage_of
from .sysfs import PCI_DEVICES, PCI_DRIVERS, Action, Host, HostError, PciDevice
from .viability import DMA_SAFE_DRIVERS, VFIO_PCI_DRIVERS

VFIO_PCI = "vfio-pci"
STATE_SCHEMA = "vfio-assign-state/1"
#: Default state file, relative to the host root (so /run/vfio-assign/state.json).
DEFAULT_STATE = "run/vfio-assign/state.json"


class AssignmentRefused(HostError):
    """The request is unsafe or incomplete; nothing was changed."""


class StateLocked(HostError):
    """Another vfio-assign run holds the state lock (only with ``wait=False``)."""


class AssignmentFailed(RuntimeError):
    """A step failed; the steps already done were undone in reverse order.

    ``cause`` is the original error; ``rollback_errors`` lists undo steps that
    failed too (empty when everything is back as it was)."""

    def __init__(self, step: str, cause: BaseException, rollback_errors: list[str]):
        self.step, self.cause, self.rollback_errors = step, cause, rollback_errors
        if rollback_errors:
            tail = "ROLLBACK INCOMPLETE: " + "; ".join(rollback_errors)
        else:
            tail = "rolled back: every device is as it was before"
        super().__init__(f"{step} failed: {cause}; {tail}")


# ---------------------------------------------------------------------------------------
# The state file
# ---------------------------------------------------------------------------------------

class StateFile:
    """The JSON record of assigned devices, changed only under ``PATH.lock``.

    ``os.lockf`` (POSIX record lock) on the separate lock file serialises whole
    runs; the data file itself is replaced atomically, so a reader never sees
    half of it.  Use as a context manager::

        with StateFile(path) as st:
            data = st.load(); ...; st.save(data)
    """

    def __init__(self, path: str, wait: bool = True):
        self.path = path
        self.wait = wait
        self._fd = -1

    def __enter__(self):
        d = os.path.dirname(self.path) or "."
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
            self._fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise HostError(f"cannot open the state lock {self.path}.lock: {e.strerror}") from None
        try:
            os.lockf(self._fd, os.F_LOCK if self.wait else os.F_TLOCK, 0)
        except OSError as e:
            os.close(self._fd)
            self._fd = -1
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StateLocked(f"{self.path} is locked by another vfio-assign run") from None
            raise HostError(f"cannot lock {self.path}.lock: {e.strerror}") from None
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)      # closing releases the lock
            self._fd = -1

    def load(self) -> dict:
        try:
            with open(self.path) as f:
                text = f.read()
        except FileNotFoundError:
            return {"schema": STATE_SCHEMA, "devices": {}}
        except OSError as e:
            raise HostError(f"cannot read state file {self.path}: {e.strerror}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise HostError(f"state file {self.path} is corrupt at line {e.lineno} column {e.colno}: {e.msg}") from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA or not isinstance(data.get("devices"), dict):
            raise HostError(f"state file {self.path} is not a {STATE_SCHEMA} file")
        return data

    def save(self, data: dict) -> None:
        if self._fd < 0:
            raise HostError(f"state file {self.path} saved without holding its lock")
        d = os.path.dirname(self.path) or "."
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=d)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(data, f, indent=1, sort_keys=True)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)


# ---------------------------------------------------------------------------------------
# Plans
# ---------------------------------------------------------------------------------------

@dataclass
class Op:
    """One step: actions done through the Sysfs object, an optional check that
    it had the intended effect, and an idempotent undo that looks at the
    current state."""
    what: str
    actions: list = field(default_factory=list)           # of Action (sysfs-relative paths)
    verify: Callable[[], None] | None = None
    undo: Callable[[], None] | None = None
    #: Actions only known once earlier steps ran (the cdev node a bind creates);
    #: ``actions`` then holds what a dry run shows in their place.
    later: Callable[[], list] | None = None


@dataclass
class Plan:
    kind: str                                    # "assign" or "release"
    devices: list = field(default_factory=list)  # PciDevice to change
    ops: list = field(default_factory=list)
    skipped: list = field(default_factory=list)  # (bdf, reason)
    groups: list = field(default_factory=list)   # group numbers involved

    def actions(self, host: Host) -> list[Action]:
        """The exact changes, with absolute paths, in order."""
        return [Action(a.kind, host.sysfs.shown(a.path) if a.path else "", a.value)
                for op in self.ops for a in op.actions]


def qemu_args(bdfs) -> list[str]:
    """QEMU command-line arguments that pass these devices to a guest."""
    out = []
    for b in bdfs:
        out += ["-device", f"vfio-pci,host={b}"]
    return out


def libvirt_xml(bdf: str) -> str:
    """A libvirt <hostdev> element (managed='no': vfio-assign did the binding)."""
    dom, bus, rest = bdf.split(":")
    slot, fn = rest.split(".")
    return ("<hostdev mode='subsystem' type='pci' managed='no'>\n"
            "  <source>\n"
            f"    <address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>\n"
            "  </source>\n"
            "</hostdev>")


class Assigner:
    """Plans and carries out assignment and release on one host.

    ``host.sysfs`` is the door for every change: a :class:`~vfio.host.sysfs.Sysfs`
    on a live system, a :class:`~vfio.host.simulate.SimulatedSysfs` in tests.
    """

    def __init__(self, host: Host, state_path: str | None = None, wait: bool = True):
        self.host = host
        self.state_path = state_path or host.sysfs.path(DEFAULT_STATE)
        self.wait = wait

    # ---- helpers -------------------------------------------------------------------
    def _driver(self, bdf: str) -> str | None:
        return self.host.sysfs.link_name(f"{PCI_DEVICES}/{bdf}/driver")

    def _w(self, rel: str, value: str) -> Action:
        return Action("write", rel, value)

    def _bind_op(self, bdf: str, drv: str) -> Op:
        """Bind ``bdf`` to ``drv`` through drivers/DRV/bind; undo: unbind whatever it has."""
        def verify():
            now = self._driver(bdf)
            if now != drv:
                raise HostError(f"{bdf} did not bind to {drv} (driver now: {now or 'none'})")
        return Op(f"bind {bdf} to {drv}", [self._w(f"{PCI_DRIVERS}/{drv}/bind", bdf)], verify,
                  lambda: self._ensure_unbound(bdf))

    def _ensure_unbound(self, bdf: str) -> None:
        now = self._driver(bdf)
        if now is not None:
            self.host.sysfs.write(f"{PCI_DRIVERS}/{now}/unbind", bdf)

    def _ensure_bound(self, bdf: str, drv: str) -> None:
        now = self._driver(bdf)
        if now == drv:
            return
        if now is not None:
            self.host.sysfs.write(f"{PCI_DRIVERS}/{now}/unbind", bdf)
        self.host.sysfs.write(f"{PCI_DRIVERS}/{drv}/bind", bdf)

    def _override_op(self, dev: PciDevice, value: str | None, previous: str | None) -> Op:
        rel = f"{PCI_DEVICES}/{dev.bdf}/driver_override"
        # an empty write clears the override ("\n": echo's own form)
        return Op(f"set driver_override of {dev.bdf} to {value or '(none)'}",
                  [self._w(rel, value or "\n")], None,
                  lambda: self.host.sysfs.write(rel, previous or "\n"))

    # ---- assignment ----------------------------------------------------------------
    def plan_assign(self, specs, whole_group: bool = False, force: bool = False,
                    owner: tuple | None = None) -> Plan:
        """Work out the steps for ``specs`` (BDFs or vendor:device); raises
        :class:`AssignmentRefused` when the request is unsafe.  Changes nothing."""
        host = self.host
        wanted: dict[str, PciDevice] = {}
        for spec in specs:
            for d in host.find(spec):
                wanted[d.bdf] = d
        if not wanted:
            raise AssignmentRefused("no device named")
        plan = Plan("assign")
        problems = []
        targets: dict[str, PciDevice] = {}
        for d in list(wanted.values()):
            if d.iommu_group is None:
                problems.append(f"{d.bdf} has no IOMMU group: this host has no IOMMU enabled "
                                "(intel_iommu=on / amd_iommu=on), and vfio-pci would need "
                                "no-IOMMU mode (unsafe, not done by vfio-assign)")
                continue
            group = host.group(d.iommu_group)
            if group.number not in plan.groups:
                plan.groups.append(group.number)
            stray = [m for m in group.devices if m.bdf not in wanted
                     and m.driver is not None and m.driver not in DMA_SAFE_DRIVERS]
            if stray and not whole_group:
                names = ", ".join(f"{m.bdf} ({m.driver})" for m in stray)
                problems.append(f"IOMMU group {group.number} of {d.bdf} also holds {names}, which "
                                f"must leave their drivers too: name them, or pass --whole-group")
                continue
            targets[d.bdf] = d
            for m in stray:
                targets[m.bdf] = m
        if problems:
            raise AssignmentRefused("refused:\n  " + "\n  ".join(problems))
        busy = []
        for d in targets.values():
            if d.driver in VFIO_PCI_DRIVERS:
                continue
            busy += [str(u) for u in usage_of(host, d)]
        if busy and not force:
            raise AssignmentRefused("refused, devices in use (use --force to take them anyway):\n  "
                                    + "\n  ".join(busy))
        if not host.has_driver(VFIO_PCI):
            plan.ops.append(Op("load vfio-pci", [Action("modprobe", "", "vfio-pci")],
                               self._check_vfio_loaded))
        for bdf in sorted(targets):
            d = targets[bdf]
            if d.driver == VFIO_PCI:
                plan.skipped.append((bdf, "already on vfio-pci"))
                continue
            plan.devices.append(d)
            if d.driver is not None:
                orig = d.driver
                plan.ops.append(Op(f"unbind {bdf} from {orig}",
                                   [self._w(f"{PCI_DRIVERS}/{orig}/unbind", bdf)], None,
                                   lambda b=bdf, o=orig: self._ensure_bound(b, o)))
            plan.ops.append(self._override_op(d, VFIO_PCI, d.driver_override))
            plan.ops.append(Op(f"probe {bdf} (binds vfio-pci)",
                               [self._w("sys/bus/pci/drivers_probe", bdf)],
                               lambda b=bdf: self._check_on(b, VFIO_PCI),
                               lambda b=bdf: self._ensure_unbound(b)))
        if owner is not None:
            uid, gid = owner
            for g in plan.groups:
                plan.ops.append(Op(f"chown /dev/vfio/{g}", [Action("chown", f"dev/vfio/{g}", f"{uid}:{gid}")]))
            for d in plan.devices:
                # kernels with VFIO_DEVICE_CDEV also make /dev/vfio/devices/vfioN per device
                plan.ops.append(Op(f"chown the VFIO cdev of {d.bdf}, if the kernel makes one",
                                   [Action("chown", f"dev/vfio/devices/vfio* (cdev of {d.bdf}, if any)", f"{uid}:{gid}")],
                                   later=lambda b=d.bdf, o=f"{uid}:{gid}": self._cdev_chowns(b, o)))
        return plan

    def _cdev_chowns(self, bdf: str, owner: str) -> list:
        # sysfs lists vfio-dev/vfioN on every 6.x kernel; the node exists only with VFIO_DEVICE_CDEV
        return [Action("chown", f"dev/vfio/devices/{n}", owner)
                for n in self.host.sysfs.listdir(f"{PCI_DEVICES}/{bdf}/vfio-dev")
                if self.host.sysfs.exists(f"dev/vfio/devices/{n}")]

    def _check_vfio_loaded(self) -> None:
        if not self.host.has_driver(VFIO_PCI):
            raise HostError("modprobe vfio-pci succeeded but /sys/bus/pci/drivers/vfio-pci did not appear")

    def _check_on(self, bdf: str, drv: str) -> None:
        now = self._driver(bdf)
        if now != drv:
            raise HostError(f"{bdf} did not bind to {drv} after drivers_probe (driver now: {now or 'none'})")

    # ---- release ---------------------------------------------------------------------
    def plan_release(self, specs, state: dict, force: bool = False) -> Plan:
        """Steps that put devices recorded in ``state`` back on their original drivers.
        ``specs`` None means every recorded device.  Refuses (unless ``force``)
        while a group is held open: unbinding a device in use by a VMM blocks
        in the kernel until the VMM lets go."""
        recorded = state["devices"]
        if specs is None:
            bdfs = sorted(recorded)
        else:
            bdfs = []
            for spec in specs:
                for d in self.host.find(spec):
                    if d.bdf not in recorded:
                        raise AssignmentRefused(f"{d.bdf} was not assigned by vfio-assign "
                                                f"(no record in {self.state_path})")
                    bdfs.append(d.bdf)
        plan = Plan("release")
        if not force:
            self._refuse_open_groups(bdfs)
        for bdf in sorted(set(bdfs)):
            rec = recorded[bdf]
            d = self.host.device(bdf)
            plan.devices.append(d)
            orig, orig_override = rec.get("driver"), rec.get("driver_override")
            if d.driver is not None and d.driver != orig:
                cur = d.driver
                plan.ops.append(Op(f"unbind {bdf} from {cur}", [self._w(f"{PCI_DRIVERS}/{cur}/unbind", bdf)],
                                   None, lambda b=bdf, c=cur: self._ensure_bound(b, c)))
            if d.driver_override != orig_override:
                plan.ops.append(self._override_op(d, orig_override, d.driver_override))
            if orig is not None and d.driver != orig:
                if self.host.has_driver(orig):
                    plan.ops.append(self._bind_op(bdf, orig))
                else:
                    # its module is not loaded: let the kernel pick, then check it was the original
                    plan.ops.append(Op(f"probe {bdf} (for {orig})", [self._w("sys/bus/pci/drivers_probe", bdf)],
                                       lambda b=bdf, o=orig: self._check_on(b, o),
                                       lambda b=bdf: self._ensure_unbound(b)))
        return plan

    def _refuse_open_groups(self, bdfs) -> None:
        if self.host.root != "/":
            return                    # a captured tree has placeholder nodes only
        busy = []
        for g in sorted({self.host.device(b).iommu_group for b in bdfs} - {None}):
            node = self.host.sysfs.path(f"dev/vfio/{g}")
            try:
                fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
            except OSError as e:
                # a group can be open once: EBUSY means a VMM or driver holds it
                if e.errno == errno.EBUSY:
                    busy.append(f"/dev/vfio/{g}")
                continue
            os.close(fd)
        if busy:
            raise AssignmentRefused(f"{', '.join(busy)} held open by another process (a VMM?): "
                                    "unbinding would block until it lets go; close it first or pass --force")

    # ---- carrying out ------------------------------------------------------------------
    def execute(self, plan: Plan) -> None:
        """Run every op; on any failure undo the started ones in reverse and raise
        :class:`AssignmentFailed`."""
        started: list[Op] = []
        sysfs = self.host.sysfs
        n = len(plan.ops)
        for i, op in enumerate(plan.ops, 1):
            started.append(op)   # before acting: an op may fail after the kernel acted
            try:
                for a in (op.later() if op.later is not None else op.actions):
                    if a.kind == "write":
                        sysfs.write(a.path, a.value)
                    elif a.kind == "chown":
                        uid, gid = (int(x) for x in a.value.split(":"))
                        sysfs.chown(a.path, uid, gid)
                    elif a.kind == "modprobe":
                        sysfs.modprobe(a.value)
                if op.verify is not None:
                    op.verify()
            except BaseException as e:
                errors = []
                for done in reversed(started):
                    if done.undo is None:
                        continue
                    try:
                        done.undo()
                    except Exception as ue:        # keep undoing the rest: each undo is independent
                        errors.append(f"undo of '{done.what}': {ue}")
                raise AssignmentFailed(f"step {i}/{n} '{op.what}'", e, errors) from e

    def _now(self) -> str:
        return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def assign(self, specs, whole_group: bool = False, force: bool = False,
               owner: tuple | None = None, dry_run: bool = False) -> Plan:
        """Plan and (unless ``dry_run``) carry out an assignment, under the state lock."""
        with StateFile(self.state_path, self.wait) as st:
            state = st.load()
            plan = self.plan_assign(specs, whole_group, force, owner)
            if dry_run:
                return plan
            for d in plan.devices:
                old = state["devices"].get(d.bdf)
                state["devices"][d.bdf] = {
                    # a device released by hand and assigned again keeps its first original
                    "driver": old["driver"] if old else d.driver,
                    "driver_override": old["driver_override"] if old else d.driver_override,
                    "ids": d.ids, "iommu_group": d.iommu_group,
                    "status": "assigning", "since": self._now(), "uid": os.getuid(),
                }
            if plan.devices:
                st.save(state)
            try:
                self.execute(plan)
            except AssignmentFailed:
                for d in plan.devices:
                    state["devices"].pop(d.bdf, None)
                st.save(state)
                raise
            for d in plan.devices:
                state["devices"][d.bdf]["status"] = "assigned"
            if plan.devices:
                st.save(state)
            return plan

    def release(self, specs=None, dry_run: bool = False, force: bool = False) -> Plan:
        """Put devices back on their original drivers and forget them (``specs``
        None: every recorded device)."""
        with StateFile(self.state_path, self.wait) as st:
            state = st.load()
            plan = self.plan_release(specs, state, force)
            if dry_run:
                return plan
            self.execute(plan)
            for d in plan.devices:
                state["devices"].pop(d.bdf, None)
            st.save(state)
            return plan

    def status(self) -> dict:
        with StateFile(self.state_path, self.wait) as st:
            return st.load()
