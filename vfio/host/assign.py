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
  Release is symmetric: a device goes back with the companions that were
  assigned with it, or the request is refused naming them (``split_group``
  overrides that).  A member that is not a PCI function (a platform device)
  counts by its bus's rule and is named, never moved, by a PCI run.
* **Safety.**  Devices in use (:mod:`vfio.host.inuse`: mounted disks, the root
  filesystem, configured network interfaces, the boot VGA) are refused unless
  ``force``.
* **State.**  The original driver and override of every device are recorded in
  a JSON state file *before* the first write (status ``assigning``, then
  ``assigned``), so ``release`` knows where each device goes back to even after
  a crash (``releasing`` while a release runs).  The file is only changed under
  an exclusive lock on ``STATE.lock`` and replaced atomically (write, fsync,
  rename, fsync of the directory), so a second concurrent run waits (or fails
  with ``wait=False``) and cannot corrupt it.  Reading it (``status``, dry
  runs) takes no lock and creates nothing.  A file that is not a record
  vfio-assign wrote is refused with a recovery recipe and never overwritten:
  it may be the only record of where the devices came from.
* **Rollback.**  A plan is a list of :class:`Op`; each op knows how to undo
  itself by looking at the current state (so undoing an op that failed
  half-way, or never ran, is harmless).  Any failure undoes every op started,
  in reverse order, and the error says, from sysfs, where each device is now
  compared with before (an undo that failed because there was nothing to undo
  is no "incomplete rollback").
* **Dry run.**  :meth:`Plan.actions` are the exact writes, printed by
  ``vfio-assign --dry-run``; every change goes through
  :class:`vfio.host.sysfs.Sysfs`, the one object tests intercept.
* **Reconciliation.**  A run can die between two writes (a kill, a power
  cut).  The record then says what was meant, sysfs says what is:
  :meth:`Assigner.reconcile` compares the two for every recorded device and
  says what ``release`` will do; :func:`interrupted` lists the devices an
  interrupted run left half-way (read-only; ``vfio-inspect`` shows them).
* **Device-tree devices.**  :class:`PlatformAssigner` does the same for
  platform and AMBA devices (vfio-platform, vfio-amba), keyed by device name
  in its own state file (:data:`PLATFORM_STATE`); only the hooks that find a
  device and fill its record differ, the state file, the run, the rollback
  loop and reconciliation are :class:`Assigner`'s.
* **Groups that appear on probe.**  With some IOMMUs (virtio-iommu described
  by ACPI VIOT) the kernel attaches a device to the IOMMU -- and gives it a
  group -- only when a driver probes it, so a device no driver has claimed has
  no ``iommu_group`` although the host has an IOMMU.  Such a device is bound
  like any other; once vfio-pci has probed it, its group is read and checked
  (companions not covered by the request roll the whole run back).
"""

from __future__ import annotations

import datetime
import enum
import errno
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Callable

from ..errors import Error
from .inuse import usage_of
from ..address import normalize_bdf
from .sysfs import PCI_DEVICES, PCI_DRIVERS, Action, DeviceNotFound, Host, HostError, PciDevice
from .viability import DMA_SAFE_DRIVERS, VFIO_PCI_DRIVERS

VFIO_PCI = "vfio-pci"
STATE_SCHEMA = "vfio-assign-state/1"
#: Default state file, relative to the host root (so /run/vfio-assign/state.json).
from . import ASSIGN_STATE_FILE as DEFAULT_STATE  # noqa: E402


class AssignmentRefused(HostError):
    """The request is unsafe or incomplete; nothing was changed."""


class StateLocked(HostError):
    """Another vfio-assign run holds the state lock (only with ``wait=False``)."""


class StateCorrupt(HostError):
    """The state file cannot be read as a record; it is left exactly as it is."""


@dataclass(frozen=True)
class Outcome:
    """What a failed run did to one device: its (driver, override) before and now.
    ``now`` is None when the device has disappeared from sysfs."""
    bdf: str
    before: tuple
    now: tuple | None

    @property
    def unchanged(self) -> bool:
        return self.now == self.before

    def __str__(self) -> str:
        def say(t):
            drv, ovr = t
            return f"{drv or 'no driver'}" + (f" (driver_override {ovr})" if ovr else "")
        if self.now is None:
            return f"{self.bdf}: gone from sysfs (was on {say(self.before)})"
        if self.unchanged:
            return f"{self.bdf}: on {say(self.now)}, as before"
        return f"{self.bdf}: now on {say(self.now)}, was on {say(self.before)}"


class AssignmentFailed(Error, RuntimeError):
    """A step failed; the steps already done were undone in reverse order.

    ``cause`` is the original error; ``rollback_errors`` lists undo steps that
    failed; ``outcomes`` (:class:`Outcome`) says, from sysfs after the
    rollback, where every device of the plan is now compared with before the
    run.  ``incomplete`` is judged from those outcomes, not from the undo
    errors: an undo that failed because there was nothing to undo changed
    nothing."""

    def __init__(self, step: str, cause: BaseException, rollback_errors: list[str],
                 outcomes: list | None = None, kind: str = "assign"):
        self.step, self.cause, self.rollback_errors = step, cause, rollback_errors
        self.outcomes = list(outcomes or [])
        self.kind = kind
        if self.incomplete:
            bad = [o for o in self.outcomes if not o.unchanged]
            fix = (f"`vfio-assign release {' '.join(o.bdf for o in bad)}` puts them back" if kind == "assign"
                   else "they stay recorded: run `vfio-assign release` again")
            undo = f" (undo errors: {'; '.join(rollback_errors)})" if rollback_errors else ""
            tail = "ROLLBACK INCOMPLETE: " + "; ".join(str(o) for o in bad or self.outcomes) + undo + "; " + fix
        else:
            tail = "rolled back: every device is as it was before"
            if self.outcomes:
                tail += " (" + "; ".join(str(o) for o in self.outcomes) + ")"
            if rollback_errors:
                tail += "; undo steps that failed changed nothing: " + "; ".join(rollback_errors)
        super().__init__(f"{step} failed: {cause}; {tail}")

    @property
    def incomplete(self) -> bool:
        """Some device is not where it was before the run (judged from sysfs);
        without outcomes, any undo error counts."""
        if self.outcomes:
            return any(not o.unchanged for o in self.outcomes)
        return bool(self.rollback_errors)


# ---------------------------------------------------------------------------------------
# The state file
# ---------------------------------------------------------------------------------------

#: Record statuses: written before the first write of a run, so a run that dies
#: mid-way leaves "assigning"/"releasing" behind.
STATUSES = ("assigning", "assigned", "releasing")
#: A state file larger than this is not something vfio-assign wrote.
MAX_STATE_BYTES = 1 << 22
_DRIVER_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,64}$")
#: How to recover by hand, named in every corrupt-state error.
_RECOVER = ("vfio-assign will neither use nor overwrite it. To recover: keep it (it may be the only "
            "record of the drivers the devices had), move it aside (mv {p} {p}.corrupt), see which devices "
            "are still on vfio-pci (vfio-inspect), and give each back by hand: "
            "echo BDF > /sys/bus/pci/drivers/vfio-pci/unbind; "
            "echo > /sys/bus/pci/devices/BDF/driver_override; echo BDF > /sys/bus/pci/drivers_probe")


def _check_entry_fields(name: str, rec: dict, strings: tuple) -> str:
    """Why an entry's fields that PCI and platform records share are malformed ('' when
    fine): ``driver`` and ``driver_override`` (a driver name or null), ``status``, and
    the optional ``strings``."""
    for key in ("driver", "driver_override"):
        if key not in rec:
            return f"the entry of {name} has no {key!r}"
        v = rec[key]
        if v is not None and not (isinstance(v, str) and _DRIVER_NAME.match(v)):
            return f"the entry of {name} has {key} {v!r}, not a driver name or null"
    if rec.get("status") not in STATUSES:
        return f"the entry of {name} has status {rec.get('status')!r}, not one of {', '.join(STATUSES)}"
    for key in strings:
        if rec.get(key) is not None and not isinstance(rec[key], str):
            return f"the entry of {name} has {key} {rec[key]!r}, not a string"
    return ""


def _check_record(bdf: str, rec) -> str:
    """Why a device entry is malformed ('' when it is fine)."""
    try:
        if normalize_bdf(bdf) != bdf:
            return f"device key {bdf!r} is not a full PCI address"
    except (ValueError, TypeError):
        return f"device key {bdf!r} is not a PCI address"
    if not isinstance(rec, dict):
        return f"the entry of {bdf} is a {type(rec).__name__}, not an object"
    why = _check_entry_fields(bdf, rec, ("ids", "iommu_group", "since"))
    if why:
        return why
    if rec.get("uid") is not None and (not isinstance(rec["uid"], int) or isinstance(rec["uid"], bool)):
        return f"the entry of {bdf} has uid {rec['uid']!r}, not an integer"
    return ""


class StateFile:
    """The JSON record of assigned devices, changed only under ``PATH.lock``.

    ``os.lockf`` (POSIX record lock) on the separate lock file serialises whole
    runs; the data file itself is replaced atomically (temporary file, fsync,
    rename, fsync of the directory), so a reader never sees half of it and a
    crash leaves the old or the new record, never neither.  ``readonly``
    readers take no lock and create nothing (the atomic replacement is what
    makes that safe).  Use as a context manager::

        with StateFile("state.json") as st:
            data = st.load(); ...; st.save(data)

    :meth:`load` raises :class:`StateCorrupt` for anything that is not a
    record vfio-assign wrote, and the file is then never overwritten.
    """

    def __init__(self, path: str, wait: bool = True, readonly: bool = False):
        self.path = path
        self.wait = wait
        self.readonly = readonly
        self._fd = -1

    def __enter__(self):
        if self.readonly:
            return self
        d = os.path.dirname(self.path) or "."
        try:
            os.makedirs(d, mode=0o755, exist_ok=True)
            self._fd = os.open(self.path + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise HostError(f"cannot open the state lock {self.path}.lock: {e.strerror}", errno=e.errno) from None
        try:
            os.lockf(self._fd, os.F_LOCK if self.wait else os.F_TLOCK, 0)
        except OSError as e:
            os.close(self._fd)
            self._fd = -1
            if e.errno in (errno.EACCES, errno.EAGAIN):
                raise StateLocked(f"{self.path} is locked by another vfio-assign run", errno=e.errno) from None
            raise HostError(f"cannot lock {self.path}.lock: {e.strerror}", errno=e.errno) from None
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)      # closing releases the lock
            self._fd = -1

    def _corrupt(self, why: str) -> StateCorrupt:
        return StateCorrupt(f"state file {self.path} is corrupt: {why}. " + _RECOVER.format(p=self.path))

    def load(self) -> dict:
        """The record (an empty one when there is no file).  Raises
        :class:`StateCorrupt` for a file vfio-assign did not write, and
        :class:`HostError` when it cannot be read."""
        try:
            with open(self.path, "rb") as f:
                raw = f.read(MAX_STATE_BYTES + 1)
        except FileNotFoundError:
            return {"schema": STATE_SCHEMA, "devices": {}}
        except OSError as e:
            raise HostError(f"cannot read state file {self.path}: {e.strerror}", errno=e.errno) from None
        if len(raw) > MAX_STATE_BYTES:
            raise self._corrupt(f"larger than {MAX_STATE_BYTES} bytes")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self._corrupt(f"byte 0x{raw[e.start]:02x} at offset {e.start} is not UTF-8") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise self._corrupt(f"line {e.lineno} column {e.colno}: {e.msg}") from None
        except ValueError as e:          # a number too long to convert (int_max_str_digits)
            raise self._corrupt(str(e).split(";")[0]) from None
        except RecursionError:
            raise self._corrupt("nested too deeply") from None
        if not isinstance(data, dict) or data.get("schema") != STATE_SCHEMA or not isinstance(data.get("devices"), dict):
            raise self._corrupt(f"not a {STATE_SCHEMA} file")
        for bdf, rec in data["devices"].items():
            why = self._check(bdf, rec)
            if why:
                raise self._corrupt(why)
        return data

    @staticmethod
    def _check(key: str, rec) -> str:
        """Why a device entry is malformed ('' when it is fine)."""
        return _check_record(key, rec)

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


#: Guest slot tried first for a multifunction device.  QEMU gives devices without
#: ``addr=`` the lowest free slot of the root bus (q35: 00.0 host bridge, 01.0
#: VGA, then the NIC and the rest from 02.0 up; 1f.x is ICH9), so a high slot
#: stays clear of them.
DEFAULT_GUEST_SLOT = 0x10
_LAST_GUEST_SLOT = 0x1e          # 0x1f: the ICH9 functions on q35


@dataclass(frozen=True)
class GuestPlacement:
    """Where one host function goes in the guest.  ``slot`` None: QEMU chooses
    (a single-function device); otherwise the functions of one host slot share
    a guest slot on the root bus, function 0 carrying ``multifunction=on``."""
    host: str
    slot: int | None
    function: int
    multifunction: bool


def guest_layout(bdfs, first_slot: int = DEFAULT_GUEST_SLOT) -> list[GuestPlacement]:
    """Guest addresses for ``bdfs``: the functions of one host slot stay one
    multifunction device, as libvirt does (host function numbers kept when
    function 0 is among them, else renumbered from 0: a guest finds the other
    functions only through function 0).  Raises :class:`HostError` when the
    root bus has no slot left from ``first_slot`` on."""
    if not 1 <= first_slot <= _LAST_GUEST_SLOT:
        raise HostError(f"guest slot 0x{first_slot:x} is outside 0x01..0x{_LAST_GUEST_SLOT:x}")
    by_slot: dict[str, list[str]] = {}
    for b in sorted({normalize_bdf(b) for b in bdfs}):
        by_slot.setdefault(b.rsplit(".", 1)[0], []).append(b)
    out, slot = [], first_slot
    for key in sorted(by_slot):
        fns = by_slot[key]
        if len(fns) == 1:
            out.append(GuestPlacement(fns[0], None, 0, False))
            continue
        if slot > _LAST_GUEST_SLOT:
            raise HostError(f"no guest slot left for {key}.x (slots 0x{first_slot:x}..0x{_LAST_GUEST_SLOT:x} "
                            "are taken by other multifunction devices)")
        host_fns = [int(b.rsplit(".", 1)[1], 16) for b in fns]
        guest_fns = host_fns if 0 in host_fns else list(range(len(fns)))
        out += [GuestPlacement(b, slot, f, f == 0) for b, f in zip(fns, guest_fns)]
        slot += 1
    return out


def qemu_args(bdfs, first_slot: int = DEFAULT_GUEST_SLOT) -> list[str]:
    """QEMU command-line arguments that pass these devices to a guest (see
    :func:`guest_layout` for multifunction devices)."""
    out = []
    for p in guest_layout(bdfs, first_slot):
        opt = f"vfio-pci,host={p.host}"
        if p.slot is not None:
            opt += f",addr=0x{p.slot:02x}.{p.function}" + (",multifunction=on" if p.multifunction else "")
        out += ["-device", opt]
    return out


def layout_note(bdfs, first_slot: int = DEFAULT_GUEST_SLOT) -> str:
    """One sentence per multifunction device saying which guest slot was chosen and why ('' if none)."""
    slots: dict[int, list[str]] = {}
    for p in guest_layout(bdfs, first_slot):
        if p.slot is not None:
            slots.setdefault(p.slot, []).append(p.host)
    return " ".join(
        f"{', '.join(hs)} are one multifunction device: they share guest slot 0x{s:02x} on the root bus "
        f"(function 0 with multifunction=on); QEMU places other devices from the lowest free slot up, so a "
        f"high slot stays clear of them -- pick another with --guest-slot if your command line uses 0x{s:02x}."
        for s, hs in sorted(slots.items()))


def libvirt_xml(bdf: str, place: GuestPlacement | None = None) -> str:
    """A libvirt <hostdev> element (managed='no': vfio-assign did the binding);
    with ``place`` and a slot, the guest address too (libvirt's multifunction form)."""
    dom, bus, rest = bdf.split(":")
    slot, fn = rest.split(".")
    guest = ""
    if place is not None and place.slot is not None:
        guest = (f"  <address type='pci' domain='0x0000' bus='0x00' slot='0x{place.slot:02x}' "
                 f"function='0x{place.function:x}'" + (" multifunction='on'" if place.multifunction else "") + "/>\n")
    return ("<hostdev mode='subsystem' type='pci' managed='no'>\n"
            "  <source>\n"
            f"    <address domain='0x{dom}' bus='0x{bus}' slot='0x{slot}' function='0x{fn}'/>\n"
            "  </source>\n"
            + guest +
            "</hostdev>")


def libvirt_hostdevs(bdfs, first_slot: int = DEFAULT_GUEST_SLOT) -> list[str]:
    return [libvirt_xml(p.host, p) for p in guest_layout(bdfs, first_slot)]


class Condition(enum.Enum):
    """A recorded device compared with what sysfs says now."""
    ASSIGNED = "assigned"          # on vfio-pci with the vfio-pci override, record says so
    INTERRUPTED = "interrupted"    # a run died (or failed) half-way: neither assigned nor as before
    RESTORED = "restored"          # already on its original driver and override: only the record is left
    MISSING = "missing"            # the device is gone from sysfs


@dataclass(frozen=True)
class Reconciled:
    """One record of the state file next to the device's current sysfs state."""
    bdf: str
    record: dict
    driver: str | None              # now (None also when MISSING)
    driver_override: str | None
    condition: Condition
    note: str                       # what happened, in a sentence
    release_will: tuple             # what ``vfio-assign release BDF`` will do, step by step

    def as_dict(self) -> dict:
        return {**self.record, "now": None if self.condition is Condition.MISSING else
                {"driver": self.driver, "driver_override": self.driver_override},
                "condition": self.condition.value, "note": self.note, "release_will": list(self.release_will)}


class Assigner:
    """Plans and carries out assignment and release on one host.

    ``host.sysfs`` is the door for every change: a :class:`~vfio.host.sysfs.Sysfs`
    on a live system, a :class:`~vfio.host.simulate.SimulatedSysfs` in tests.
    """

    #: The kind of state file the records live in (one per kind of device key).
    state_file = StateFile

    def __init__(self, host: Host, state_path: str | None = None, wait: bool = True):
        self.host = host
        self.state_path = state_path or host.sysfs.path(DEFAULT_STATE)
        self.wait = wait

    # ---- what differs between buses: the device behind a key and its record ---------
    def _lookup(self, key: str):
        """The device recorded under ``key`` as sysfs shows it now (``.bdf`` is its key);
        raises :class:`DeviceNotFound`."""
        return self.host.device(key)

    def _vfio_driver(self, dev) -> str:
        """The driver (and override) an assigned device is on."""
        return VFIO_PCI

    def _record_fields(self, dev) -> dict:
        """What a record keeps about ``dev`` besides its original driver and status."""
        return {"ids": dev.ids, "iommu_group": dev.iommu_group}

    # ---- helpers -------------------------------------------------------------------
    def _driver(self, bdf: str) -> str | None:
        return self.host.sysfs.link_name(f"{PCI_DEVICES}/{bdf}/driver")

    def _where(self, bdf: str) -> tuple | None:
        """(driver, override) now; None when the device is gone."""
        try:
            d = self._lookup(bdf)
        except DeviceNotFound:
            return None
        return (d.driver, d.driver_override)

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

    def _ensure_override(self, bdf: str, value: str | None) -> None:
        # only write when it differs: the write that failed may be the very one that
        # would "undo" it (a read-only driver_override), and nothing needs undoing then
        if self.host.device(bdf).driver_override != value:
            self.host.sysfs.write(f"{PCI_DEVICES}/{bdf}/driver_override", value or "\n")

    def _override_op(self, dev: PciDevice, value: str | None, previous: str | None) -> Op:
        rel = f"{PCI_DEVICES}/{dev.bdf}/driver_override"
        # an empty write clears the override ("\n": echo's own form)
        return Op(f"set driver_override of {dev.bdf} to {value or '(none)'}",
                  [self._w(rel, value or "\n")], None,
                  lambda: self._ensure_override(dev.bdf, previous))

    def _stray_others(self, group) -> list:
        """Non-PCI members of ``group`` that keep it from being viable (:mod:`vfio.host.viability`)."""
        from .viability import other_member_status
        return [m for m in (other_member_status(self.host, group.number, n) for n in group.others) if not m.ok]

    def _stray(self, group, covered) -> list:
        """Members of ``group`` outside ``covered`` whose drivers own their DMA."""
        return [m for m in group.devices if m.bdf not in covered
                and m.driver is not None and m.driver not in DMA_SAFE_DRIVERS]

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
        late: list[str] = []             # group known only once vfio-pci has probed them
        others_checked: set = set()
        iommu = host.has_iommu
        for d in list(wanted.values()):
            if d.iommu_group is None:
                if not iommu:
                    problems.append(f"{d.bdf} has no IOMMU group: this host has no IOMMU enabled "
                                    "(no /sys/class/iommu entry, no IOMMU groups: intel_iommu=on / "
                                    "amd_iommu=on), and vfio-pci would need no-IOMMU mode (unsafe, "
                                    "not done by vfio-assign)")
                    continue
                # an IOMMU is registered but has not attached this device yet (virtio-iommu
                # with ACPI VIOT does that when a driver probes it): its group comes with the bind
                late.append(d.bdf)
                targets[d.bdf] = d
                continue
            group = host.group(d.iommu_group)
            if group.number not in plan.groups:
                plan.groups.append(group.number)
            stray = self._stray(group, wanted)
            if stray and not whole_group:
                names = ", ".join(f"{m.bdf} ({m.driver})" for m in stray)
                problems.append(f"IOMMU group {group.number} of {d.bdf} also holds {names}, which "
                                f"must leave their drivers too: name them, or pass --whole-group")
                continue
            targets[d.bdf] = d
            for m in stray:
                targets[m.bdf] = m
            # members that are not PCI functions count too (a platform device on its own
            # driver keeps the group unviable); the PCI path cannot move them: say how
            if group.number not in others_checked:
                others_checked.add(group.number)
                for m in self._stray_others(group):
                    problems.append(f"IOMMU group {group.number} of {d.bdf} is not viable while {m.reason}, "
                                    f"which is not a PCI function: give it to VFIO first (vfio-assign bind "
                                    f"{m.bdf}) or unbind it")
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
        covered = frozenset(targets)
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
            check = ((lambda b=bdf: self._check_late_group(b, covered, whole_group)) if bdf in late
                     else (lambda b=bdf: self._check_on(b, VFIO_PCI)))
            plan.ops.append(Op(f"probe {bdf} (binds vfio-pci)" + (", then check its new IOMMU group" if bdf in late else ""),
                               [self._w("sys/bus/pci/drivers_probe", bdf)], check,
                               lambda b=bdf: self._ensure_unbound(b)))
        if owner is not None:
            uid, gid = owner
            for g in plan.groups:
                plan.ops.append(Op(f"chown /dev/vfio/{g}", [Action("chown", f"dev/vfio/{g}", f"{uid}:{gid}")]))
            for b in late:
                plan.ops.append(Op(f"chown the group node of {b}",
                                   [Action("chown", f"dev/vfio/N (N: the group {b} gets when probed)", f"{uid}:{gid}")],
                                   later=lambda b=b, o=f"{uid}:{gid}": self._late_group_chown(b, o, plan.groups)))
            for d in plan.devices:
                # kernels with VFIO_DEVICE_CDEV also make /dev/vfio/devices/vfioN per device
                plan.ops.append(Op(f"chown the VFIO cdev of {d.bdf}, if the kernel makes one",
                                   [Action("chown", f"dev/vfio/devices/vfio* (cdev of {d.bdf}, if any)", f"{uid}:{gid}")],
                                   later=lambda b=d.bdf, o=f"{uid}:{gid}": self._cdev_chowns(b, o)))
        return plan

    def _late_group_chown(self, bdf: str, owner: str, done: list) -> list:
        g = self.host.device(bdf).iommu_group
        if g is None or g in done:
            return []
        done.append(g)
        return [Action("chown", f"dev/vfio/{g}", owner)]

    def _check_late_group(self, bdf: str, covered: frozenset, whole_group: bool) -> None:
        """After vfio-pci probed a device that had no group: it must have one now,
        and nothing outside the request may share it (else the run rolls back)."""
        self._check_on(bdf, VFIO_PCI)
        d = self.host.device(bdf)
        if d.iommu_group is None:
            raise HostError(f"{bdf} is on vfio-pci but still has no IOMMU group")
        stray = self._stray(self.host.group(d.iommu_group), covered)
        if stray:
            names = ", ".join(f"{m.bdf} ({m.driver})" for m in stray)
            raise HostError(f"{bdf} joined IOMMU group {d.iommu_group} only when probed, and that group "
                            f"also holds {names}, which this request does not cover; the group is known now: "
                            "name them" + ("" if whole_group else " or pass --whole-group") + " and run again")

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
    def _release_ops(self, name: str, rec: dict, d) -> list[Op]:
        """Steps from where ``d`` is now back to the recorded driver and override: unbind
        from the current driver, restore the override, then :meth:`_rebind_op`.  The
        platform assigner shares these steps; its devices' drivers live elsewhere
        (:meth:`_drivers_dir`) and go back through a probe."""
        ops = []
        orig, orig_override = rec.get("driver"), rec.get("driver_override")
        if d.driver is not None and d.driver != orig:
            cur = d.driver
            ops.append(Op(f"unbind {name} from {cur}", [self._w(f"{self._drivers_dir(d)}/{cur}/unbind", name)],
                          None, lambda b=name, c=cur: self._ensure_bound(b, c)))
        if d.driver_override != orig_override:
            ops.append(self._override_op(d, orig_override, d.driver_override))
        if orig is not None and d.driver != orig:
            ops.append(self._rebind_op(name, orig, d))
        return ops

    def _drivers_dir(self, d: PciDevice) -> str:
        return PCI_DRIVERS

    def _rebind_op(self, bdf: str, orig: str, d: PciDevice) -> Op:
        if self.host.has_driver(orig):
            return self._bind_op(bdf, orig)
        # its module is not loaded: let the kernel pick, then check it was the original
        return Op(f"probe {bdf} (for {orig})", [self._w("sys/bus/pci/drivers_probe", bdf)],
                  lambda b=bdf, o=orig: self._check_on(b, o), lambda b=bdf: self._ensure_unbound(b))

    def _group_of_record(self, bdf: str, rec: dict) -> str | None:
        try:
            return self.host.device(bdf).iommu_group or rec.get("iommu_group")
        except DeviceNotFound:
            return rec.get("iommu_group")

    def plan_release(self, specs, state: dict, force: bool = False, whole_group: bool = False,
                     split_group: bool = False) -> Plan:
        """Steps that put devices recorded in ``state`` back on their original drivers.
        ``specs`` None means every recorded device.

        Release is symmetric with binding: a named device whose IOMMU group
        holds other devices recorded by vfio-assign is refused, naming them,
        unless ``whole_group`` (release them too) or ``split_group`` (release
        only the named ones; the companions stay on vfio-pci).  Refuses (unless
        ``force``) while a group is held open: unbinding a device in use by a
        VMM blocks in the kernel until the VMM lets go.  A recorded device that
        is gone from sysfs is only forgotten (listed in ``skipped``)."""
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
            named = set(bdfs)
            groups = {self._group_of_record(b, recorded[b]) for b in named} - {None}
            left = sorted(b for b in recorded if b not in named
                          and self._group_of_record(b, recorded[b]) in groups)
            if left and whole_group:
                bdfs += left
            elif left and not split_group:
                raise AssignmentRefused(
                    f"IOMMU group {', '.join(sorted(groups))} also holds {', '.join(left)}, assigned by "
                    "vfio-assign with it: a group goes back whole, as it was bound. Name them, pass "
                    "--whole-group to release them too, or --split-group to release only the named "
                    "devices and leave the others on vfio-pci")
        plan = Plan("release")
        present = []
        for bdf in sorted(set(bdfs)):
            try:
                d = self.host.device(bdf)
            except DeviceNotFound:
                plan.skipped.append((bdf, "gone from sysfs: only its record is dropped"))
                continue
            present.append(bdf)
            plan.devices.append(d)
            plan.ops += self._release_ops(bdf, recorded[bdf], d)
        if not force:
            self._refuse_open_groups(present)
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
        :class:`AssignmentFailed`, whose outcomes say where each device is now."""
        started: list[Op] = []
        sysfs = self.host.sysfs
        before = {d.bdf: (d.driver, d.driver_override) for d in plan.devices}
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
                outcomes = [Outcome(b, was, self._where(b)) for b, was in before.items()]
                raise AssignmentFailed(f"step {i}/{n} '{op.what}'", e, errors, outcomes, plan.kind) from e

    def _now(self) -> str:
        return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")

    def assign(self, specs, whole_group: bool = False, force: bool = False,
               owner: tuple | None = None, dry_run: bool = False) -> Plan:
        """Plan and (unless ``dry_run``) carry out an assignment, under the state lock
        (a dry run reads the state without locking or creating anything)."""
        with self.state_file(self.state_path, self.wait, readonly=dry_run) as st:
            state = st.load()
            plan = self.plan_assign(specs, whole_group, force, owner)
            if dry_run:
                return plan
            for d in plan.devices:
                old = state["devices"].get(d.bdf)
                state["devices"][d.bdf] = {
                    **self._record_fields(d),
                    # a device released by hand and assigned again keeps its first original
                    "driver": old["driver"] if old else d.driver,
                    "driver_override": old["driver_override"] if old else d.driver_override,
                    "status": "assigning", "since": self._now(), "uid": os.getuid(),
                }
            if plan.devices:
                st.save(state)
            try:
                self.execute(plan)
            except AssignmentFailed as e:
                # a device the rollback could not put back keeps its record: release needs it
                for o in e.outcomes:
                    if o.unchanged or o.now is None:
                        state["devices"].pop(o.bdf, None)
                st.save(state)
                raise
            for d in plan.devices:
                rec = state["devices"][d.bdf]
                rec["status"] = "assigned"
                try:        # the group may be known only now (an IOMMU that attaches on probe, no-IOMMU mode)
                    rec["iommu_group"] = self._lookup(d.bdf).iommu_group
                except DeviceNotFound:
                    pass    # gone since the bind: the record stays for release to report
            if plan.devices:
                st.save(state)
            return plan

    def release(self, specs=None, dry_run: bool = False, force: bool = False,
                whole_group: bool = False, split_group: bool = False) -> Plan:
        """Put devices back on their original drivers and forget them (``specs``
        None: every recorded device).  See :meth:`plan_release` for the group rule."""
        with self.state_file(self.state_path, self.wait, readonly=dry_run) as st:
            state = st.load()
            plan = self.plan_release(specs, state, force, whole_group, split_group)
            if dry_run:
                return plan
            previous = {d.bdf: state["devices"][d.bdf]["status"] for d in plan.devices}
            if plan.ops:
                for b in previous:
                    state["devices"][b]["status"] = "releasing"
                st.save(state)
            try:
                self.execute(plan)
            except AssignmentFailed:
                for b, s in previous.items():
                    state["devices"][b]["status"] = s
                st.save(state)
                raise
            for d in plan.devices:
                state["devices"].pop(d.bdf, None)
            for b, _ in plan.skipped:
                state["devices"].pop(b, None)
            st.save(state)
            return plan

    def status(self) -> dict:
        """The record as the state file has it (read-only: no lock, nothing created).
        It is what was meant, not necessarily what is: see :meth:`reconcile`."""
        with self.state_file(self.state_path, readonly=True) as st:
            return st.load()

    def reconcile(self, state: dict | None = None) -> list[Reconciled]:
        """Every recorded device next to what sysfs says now, and what release will do.
        Read-only.  Raises :class:`StateCorrupt` for a corrupt state file."""
        state = self.status() if state is None else state
        out = []
        for bdf, rec in sorted(state["devices"].items()):
            orig = (rec.get("driver"), rec.get("driver_override"))
            try:
                d = self._lookup(bdf)
            except DeviceNotFound:
                out.append(Reconciled(bdf, rec, None, None, Condition.MISSING,
                                      "gone from sysfs (removed?)", ("forget the record",)))
                continue
            now = (d.driver, d.driver_override)
            will = tuple(op.what for op in self._release_ops(bdf, rec, d)) or ("forget the record (nothing to change)",)
            status = rec.get("status")
            vdrv = self._vfio_driver(d)

            def say(t):
                return (t[0] or "no driver") + (f" (driver_override {t[1]})" if t[1] else "")
            if now == (vdrv, vdrv) and status == "assigned":
                cond, note = Condition.ASSIGNED, f"on {vdrv}; original driver {orig[0] or 'none'}"
            elif now == orig:
                cond = Condition.RESTORED
                note = (f"already back on {say(orig)}, as before it was assigned "
                        f"(record says '{status}': a run stopped before changing it or after undoing it)")
            else:
                cond = Condition.INTERRUPTED
                why = ("a run was interrupted half-way" if status in ("assigning", "releasing")
                       else "changed since it was assigned (by hand, or by a run that failed)")
                note = f"record says '{status}' but sysfs says {say(now)}; originally on {say(orig)}: {why}"
            out.append(Reconciled(bdf, rec, d.driver, d.driver_override, cond, note, will))
        return out


def interrupted(host: Host, state_path: str | None = None, platform: bool = False) -> list[Reconciled]:
    """Recorded devices that are not cleanly assigned: an interrupted (killed,
    failed) run left them there, or they are already back and only the record
    remains.  Each says the recorded original driver, the current one and what
    ``vfio-assign release`` will do.  ``platform``: the records of device-tree
    devices (:data:`PLATFORM_STATE` unless ``state_path``) instead of PCI ones.
    Read-only: takes no lock, creates nothing; [] when nothing is recorded.
    Raises :class:`StateCorrupt`."""
    kind = PlatformAssigner if platform else Assigner
    return [r for r in kind(host, state_path).reconcile() if r.condition is not Condition.ASSIGNED]


def interrupted_report(host: Host, state_path: str | None = None, platform: bool = False) -> dict:
    """:func:`interrupted` as plain data for ``vfio-inspect`` (text and JSON):
    ``{"state_file", "devices": [...], "error"}``; a state file that cannot be
    read is reported in ``error``, not raised (inspecting must go on).
    ``platform``: the device-tree devices' state file; each entry's ``device``
    is the device's name (a PCI entry's is its BDF, also in ``bdf``)."""
    path = state_path or host.sysfs.path(PLATFORM_STATE if platform else DEFAULT_STATE)
    try:
        rows = interrupted(host, path, platform=platform)
    except HostError as e:
        return {"state_file": path, "devices": [], "error": str(e)}
    return {"state_file": path, "error": None, "devices": [
        {"device": r.bdf, "bdf": None if platform else r.bdf, "original_driver": r.record.get("driver"),
         "original_driver_override": r.record.get("driver_override"),
         "driver": r.driver, "driver_override": r.driver_override, "record_status": r.record.get("status"),
         "condition": r.condition.value, "note": r.note, "release_will": list(r.release_will)}
        for r in rows]}


def render_interrupted(rep: dict | None, out) -> None:
    """The text ``vfio-inspect`` prints for :func:`interrupted_report` (nothing when all is well)."""
    if not rep or (not rep["devices"] and not rep["error"]):
        return
    print("\nvfio-assign:", file=out)
    if rep["error"]:
        print(f"  {rep['error']}", file=out)
    for d in rep["devices"]:
        print(f"  {d['device']} assignment {d['condition'].upper()}: {d['note']}", file=out)
        print(f"    `vfio-assign release {d['device']}` will: {'; '.join(d['release_will'])}", file=out)


# ---------------------------------------------------------------------------------------
# Device-tree (platform and AMBA) devices
# ---------------------------------------------------------------------------------------

from . import ASSIGN_PLATFORM_STATE_FILE as PLATFORM_STATE  # noqa: E402  (its home is vfio.host)
_PLATFORM_NAME = re.compile(r"^[A-Za-z0-9_.:@,+-]{1,128}$")
_NOIOMMU_PARAM = "sys/module/vfio/parameters/enable_unsafe_noiommu_mode"
_RESET_PARAM = "sys/module/vfio_platform/parameters/reset_required"


def _check_platform_record(name: str, rec) -> str:
    """Why a platform device entry is malformed ('' when it is fine)."""
    if not isinstance(name, str) or not _PLATFORM_NAME.match(name) or name in (".", ".."):
        return f"device key {name!r} is not a platform device name"
    if not isinstance(rec, dict):
        return f"the entry of {name} is a {type(rec).__name__}, not an object"
    if rec.get("bus") not in ("platform", "amba"):
        return f"the entry of {name} has bus {rec.get('bus')!r}, not platform or amba"
    return _check_entry_fields(name, rec, ("dt_path", "iommu_group", "since"))


class PlatformStateFile(StateFile):
    """The state file of platform/AMBA assignments: same locking, atomicity and
    corruption rules as :class:`StateFile`, entries keyed by device name."""

    @staticmethod
    def _check(key: str, rec) -> str:
        return _check_platform_record(key, rec)


class PlatformAssigner(Assigner):
    """Hands device-tree devices to vfio-platform (platform bus) or vfio-amba (AMBA
    bus) and gives them back, with the PCI rules: the same three writes
    (``drivers/ORIG/unbind``, ``driver_override``, ``drivers_probe`` on the
    device's own bus), a state file written before the first write
    (:data:`PLATFORM_STATE`), rollback of every started step on failure, and dry
    runs (:meth:`Plan.actions`).

    Refused unless ``force``: a device some bound device depends on (a
    ``consumer:`` device link, e.g. gpio-keys on a GPIO controller).  Refused
    always: a device with no IOMMU group on a kernel not in no-IOMMU mode (the
    bind would fail; vfio-assign does not switch the unsafe mode on).  A device
    whose group only appears on binding (no-IOMMU mode makes ``noiommu-N`` then)
    is bound like any other.
    """

    state_file = PlatformStateFile

    def __init__(self, host: Host, state_path: str | None = None, wait: bool = True):
        super().__init__(host, state_path or host.sysfs.path(PLATFORM_STATE), wait)

    def _lookup(self, key: str):
        return self._node(key)

    def _vfio_driver(self, dev) -> str:
        return dev.bus.vfio_driver

    def _record_fields(self, dev) -> dict:
        return {"bus": dev.bus.value, "dt_path": dev.dt_path, "iommu_group": dev.iommu_group}

    # ---- the device's bus ------------------------------------------------------------
    def _node(self, name: str):
        from ..platform import find_platform_device
        from ..errors import VfioError
        try:
            return find_platform_device(name, self.host.sysfs)
        except VfioError as e:
            raise DeviceNotFound(str(e)) from None
        except ValueError as e:
            raise HostError(str(e)) from None

    def _driver(self, name: str) -> str | None:
        return self._node(name).driver

    def _ensure_unbound(self, name: str) -> None:
        n = self._node(name)
        if n.driver is not None:
            self.host.sysfs.write(f"{n.bus.drivers}/{n.driver}/unbind", name)

    def _ensure_bound(self, name: str, drv: str) -> None:
        n = self._node(name)
        if n.driver == drv:
            return
        if n.driver is not None:
            self.host.sysfs.write(f"{n.bus.drivers}/{n.driver}/unbind", name)
        self.host.sysfs.write(f"{n.bus.drivers}/{drv}/bind", name)

    def _ensure_override(self, name: str, value: str | None) -> None:
        n = self._node(name)
        if n.driver_override != value:
            self.host.sysfs.write(f"{n.rel}/driver_override", value or "\n")

    def _override_op(self, dev, value: str | None, previous: str | None) -> Op:
        return Op(f"set driver_override of {dev.name} to {value or '(none)'}",
                  [self._w(f"{dev.rel}/driver_override", value or "\n")], None,
                  lambda: self._ensure_override(dev.name, previous))

    def _check_on(self, name: str, drv: str) -> None:
        n = self._node(name)
        if n.driver != drv:
            hint = ""
            if n.bus.vfio_driver == "vfio-platform" and drv == "vfio-platform" and \
                    self.host.sysfs.read_optional(_RESET_PARAM) == "Y":
                hint = ("; vfio-platform refuses a device it has no reset handler for while "
                        "vfio_platform.reset_required=1 (boot with vfio_platform.reset_required=0)")
            elif n.iommu_group is None:
                hint = "; it has no IOMMU group (no IOMMU covers it, and the kernel is not in no-IOMMU mode)"
            raise HostError(f"{name} did not bind to {drv} after drivers_probe (driver now: "
                            f"{n.driver or 'none'}){hint}")

    def _consumers(self, n) -> list[str]:
        """Bound devices that depend on ``n`` (its ``consumer:BUS:NAME`` device links)."""
        out = []
        for entry in self.host.sysfs.listdir(n.rel):
            if not entry.startswith("consumer:"):
                continue
            link = f"{n.rel}/{entry}/consumer"
            drv = self.host.sysfs.link_name(f"{link}/driver") if self.host.sysfs.exists(link) else None
            if drv is not None:
                out.append(f"{entry[len('consumer:'):]} (on {drv})")
        return out

    # ---- plans ------------------------------------------------------------------------
    def plan_assign(self, specs, whole_group: bool = False, force: bool = False,
                    owner: tuple | None = None) -> Plan:
        """The steps that put the named platform/AMBA devices on vfio-platform/vfio-amba;
        raises :class:`AssignmentRefused` when the request is unsafe,
        :class:`~vfio.host.sysfs.DeviceNotFound` for an unknown name.  Changes nothing."""
        nodes = {}
        for spec in specs:
            n = self._node(spec)
            nodes[n.name] = n
        if not nodes:
            raise AssignmentRefused("no device named")
        noiommu = self.host.sysfs.read_optional(_NOIOMMU_PARAM) == "Y"
        problems, busy = [], []
        for n in nodes.values():
            if n.iommu_group is None and not noiommu and n.driver != n.bus.vfio_driver:
                problems.append(f"{n.name} has no IOMMU group (no IOMMU covers it: a device-tree device "
                                "needs an 'iommus' property), and VFIO would need no-IOMMU mode "
                                "(vfio.enable_unsafe_noiommu_mode=1: unsafe, not set by vfio-assign)")
            if n.driver != n.bus.vfio_driver:
                busy += [f"{n.name}: {c} depends on it" for c in self._consumers(n)]
        problems += self._group_companions(nodes)
        if problems:
            raise AssignmentRefused("refused:\n  " + "\n  ".join(problems))
        if busy and not force:
            raise AssignmentRefused("refused, devices in use (use --force to take them anyway):\n  "
                                    + "\n  ".join(busy))
        plan = Plan("assign")
        loaded = set()
        for name in sorted(nodes):
            n = nodes[name]
            vdrv = n.bus.vfio_driver
            if n.driver == vdrv:
                plan.skipped.append((name, f"already on {vdrv}"))
                continue
            if vdrv not in loaded and not self.host.sysfs.exists(f"{n.bus.drivers}/{vdrv}"):
                plan.ops.append(Op(f"load {vdrv}", [Action("modprobe", "", vdrv.replace("-", "_"))],
                                   lambda b=n.bus, v=vdrv: self._check_loaded(b, v)))
            loaded.add(vdrv)
            plan.devices.append(n)
            if n.driver is not None:
                orig = n.driver
                plan.ops.append(Op(f"unbind {name} from {orig}", [self._w(f"{n.bus.drivers}/{orig}/unbind", name)],
                                   None, lambda b=name, o=orig: self._ensure_bound(b, o)))
            plan.ops.append(self._override_op(n, vdrv, n.driver_override))
            plan.ops.append(Op(f"probe {name} (binds {vdrv})", [self._w(f"sys/bus/{n.bus.value}/drivers_probe", name)],
                               lambda b=name, v=vdrv: self._check_on(b, v), lambda b=name: self._ensure_unbound(b)))
            if owner is not None:
                plan.ops.append(Op(f"chown the group node of {name}",
                                   [Action("chown", f"dev/vfio/N (the group {name} has once bound)",
                                           f"{owner[0]}:{owner[1]}")],
                                   later=lambda b=name, o=f"{owner[0]}:{owner[1]}": self._group_chown(b, o)))
        return plan

    def _group_companions(self, nodes: dict) -> list[str]:
        """The PCI rule for a group an IOMMU made (a device-tree node with ``iommus``):
        every other member must be on a VFIO driver, a DMA-safe one or none, or be named
        too (the kernel refuses the group otherwise; see :mod:`vfio.host.viability`)."""
        from .viability import member_status, other_member_status
        out, seen = [], set()
        for n in nodes.values():
            if n.iommu_group is None or n.iommu_group in seen:
                continue
            seen.add(n.iommu_group)
            group = self.host.group(n.iommu_group)
            members = [member_status(d) for d in group.devices] + \
                      [other_member_status(self.host, group.number, o) for o in group.others]
            stray = [m for m in members if not m.ok and m.bdf not in nodes]
            if stray:
                out.append(f"IOMMU group {group.number} of {n.name} also holds "
                           + "; ".join(m.reason for m in stray)
                           + ": give them to VFIO too (name them, or bind them first), or unbind them")
        return out

    def _check_loaded(self, bus, drv: str) -> None:
        if not self.host.sysfs.exists(f"{bus.drivers}/{drv}"):
            raise HostError(f"modprobe {drv} succeeded but /{bus.drivers}/{drv} did not appear")

    def _group_chown(self, name: str, owner: str) -> list:
        g = self._node(name).iommu_group
        if g is None:
            return []
        for node in (g, f"noiommu-{g}"):
            if self.host.sysfs.exists(f"dev/vfio/{node}"):
                return [Action("chown", f"dev/vfio/{node}", owner)]
        return []

    def _drivers_dir(self, n) -> str:
        return n.bus.drivers

    def _rebind_op(self, name: str, orig: str, n) -> Op:
        return Op(f"probe {name} (for {orig})", [self._w(f"sys/bus/{n.bus.value}/drivers_probe", name)],
                  lambda b=name, o=orig: self._check_on(b, o), lambda b=name: self._ensure_unbound(b))

    def plan_release(self, specs, state: dict, force: bool = False, whole_group: bool = False,
                     split_group: bool = False) -> Plan:
        """Steps that put recorded devices (``specs`` None: all) back on their original
        drivers and overrides.  A named device without a record is refused; one gone
        from sysfs is only forgotten (``skipped``)."""
        recorded = state["devices"]
        names = sorted(recorded) if specs is None else list(specs)
        plan = Plan("release")
        for name in sorted(set(names)):
            if name not in recorded:
                raise AssignmentRefused(f"{name} was not assigned by vfio-assign (no record in {self.state_path})")
            try:
                n = self._node(name)
            except DeviceNotFound:
                plan.skipped.append((name, "gone from sysfs: only its record is dropped"))
                continue
            plan.devices.append(n)
            plan.ops += self._release_ops(name, recorded[name], n)
        return plan

    # carrying out, status and reconciliation: :class:`Assigner`'s, through the hooks above
