"""Live PCI events: devices appearing, disappearing, binding and unbinding.

The kernel announces every change of a device on a netlink socket as a
*uevent* (``ACTION`` = add, remove, bind, unbind, change, with ``DRIVER``,
``PCI_ID``, ``PCI_SLOT_NAME``, ``SEQNUM``...).  udev re-broadcasts them after
processing, but hosts without udev (containers, the test guest) only have the
kernel's own broadcast, so :func:`events` listens with pyudev's
``source='kernel'`` monitor, which works everywhere (needs CAP_NET_ADMIN or
root in most setups).

Mediated devices (``mdev`` subsystem) are watched too: creating one through
its parent's ``create`` sends ``add`` then ``bind`` (its parent driver), and
``remove`` sends ``unbind`` then ``remove``; the device is named by its UUID.

``vfio-inspect --watch`` prints one line per event (or one JSON object per
line with ``--json``, schema ``vfio-inspect/1``, ``kind`` ``event``).
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass

from ..errors import Error

SUBSYSTEM = "pci"
#: What the watcher listens to: PCI functions, and mediated devices (``mdev``: created
#: and removed through their parent's sysfs, named by UUID in ``bdf``).
SUBSYSTEMS = (SUBSYSTEM, "mdev")


@dataclass(frozen=True)
class PciEvent:
    action: str              # add, remove, bind, unbind, change, ...
    bdf: str
    driver: str | None       # the driver bound (bind) or left (unbind), when the kernel says
    ids: str | None          # "vvvv:dddd" from PCI_ID
    seqnum: int | None
    time: float              # time.time() when received
    subsystem: str = SUBSYSTEM  # "pci", or "mdev" (then ``bdf`` is the mdev's UUID)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(schema="vfio-inspect/1", kind="event")
        return d

    def __str__(self) -> str:
        t = time.strftime("%H:%M:%S", time.localtime(self.time)) + f".{int(self.time * 1000) % 1000:03d}"
        extra = f" [{self.ids}]" if self.ids else ""
        drv = f" driver={self.driver}" if self.driver else ""
        sub = f" ({self.subsystem})" if self.subsystem != SUBSYSTEM else ""
        return f"{t} {self.action:<7} {self.bdf}{sub}{extra}{drv}"


def event_from_properties(props: dict, now: float | None = None) -> PciEvent:
    """A :class:`PciEvent` from uevent properties (as pyudev or the kernel give them)."""
    seq = props.get("SEQNUM")
    pci_id = props.get("PCI_ID")
    bdf = props.get("PCI_SLOT_NAME") or props.get("DEVPATH", "").rsplit("/", 1)[-1]
    return PciEvent(action=props.get("ACTION", "?"), bdf=bdf, driver=props.get("DRIVER") or None,
                    ids=pci_id.lower() if pci_id else None,
                    seqnum=int(seq) if seq and seq.isdigit() else None,
                    time=time.time() if now is None else now, subsystem=props.get("SUBSYSTEM") or SUBSYSTEM)


class WatchError(Error, RuntimeError):
    """The uevent monitor cannot start (no pyudev) or is already closed."""


class Watcher:
    """A started kernel-uevent monitor for the PCI subsystem (close() it)."""

    def __init__(self):
        try:
            import pyudev
        except ImportError as e:
            raise WatchError(f"--watch needs pyudev (and libudev1): {e}") from None
        self._ctx = pyudev.Context()
        self._mon = pyudev.Monitor.from_netlink(self._ctx, source="kernel")
        for sub in SUBSYSTEMS:
            self._mon.filter_by(sub)
        self._mon.start()

    def poll(self, timeout: float | None) -> PciEvent | None:
        """The next event, or None when ``timeout`` seconds pass without one."""
        if self._mon is None:
            raise WatchError("PCI event watcher is closed")
        dev = self._mon.poll(timeout=timeout)
        if dev is None:
            return None
        return event_from_properties(dict(dev.properties))

    def close(self) -> None:
        # pyudev has no close(): the netlink socket goes with the last reference
        # (udev_monitor_unref in Monitor.__del__)
        self._mon = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def events(count: int | None = None, timeout: float | None = None, watcher: Watcher | None = None):
    """Yield PCI events until ``count`` have come or ``timeout`` seconds have passed."""
    own = watcher is None
    w = watcher or Watcher()
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        n = 0
        while count is None or n < count:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return
            ev = w.poll(left)
            if ev is None:
                return
            n += 1
            yield ev
    finally:
        if own:
            w.close()


def watch_main(args, out=None) -> int:
    out = out or sys.stdout
    try:
        w = Watcher()
    except (RuntimeError, OSError) as e:
        print(f"vfio-inspect --watch: {e}", file=sys.stderr)
        return 1
    if not args.json:
        print("watching PCI and mdev uevents (add/remove/bind/unbind/change); Ctrl-C ends", file=out, flush=True)
    try:
        for ev in events(args.count, args.timeout, w):
            print(json.dumps(ev.to_dict()) if args.json else str(ev), file=out, flush=True)
    except KeyboardInterrupt:
        return 130
    finally:
        w.close()
    return 0
