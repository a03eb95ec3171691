"""PCI uevents for vfio-inspect --watch.

The decoding is tested on the properties the kernel sends; the monitor itself
on this machine's kernel with a harmless ``change`` uevent (writing "change" to
a device's ``uevent`` file re-announces it, nothing else happens).  Bind and
unbind events of real assignments are checked in the guest
(tests/kernel/test_host_assign.py).
"""

from __future__ import annotations

import io
import json
import os
import threading
import time

import pytest

from vfio.host import inspect
from vfio.host.watch import Watcher, event_from_properties, events

BIND = {"ACTION": "bind", "DEVPATH": "/devices/pci0000:00/0000:00:05.0/0000:01:00.0", "DRIVER": "vfio-pci",
        "PCI_ID": "8086:10D3", "PCI_SLOT_NAME": "0000:01:00.0", "SEQNUM": "2291", "SUBSYSTEM": "pci"}


def test_event_from_kernel_properties():
    ev = event_from_properties(BIND, now=0.0)
    assert (ev.action, ev.bdf, ev.driver, ev.ids, ev.seqnum) == ("bind", "0000:01:00.0", "vfio-pci", "8086:10d3", 2291)
    d = ev.to_dict()
    assert d["schema"] == "vfio-inspect/1" and d["kind"] == "event" and d["action"] == "bind"
    assert str(ev).endswith("bind    0000:01:00.0 [8086:10d3] driver=vfio-pci")


def test_remove_event_without_driver_or_slot_name():
    ev = event_from_properties({"ACTION": "remove", "DEVPATH": "/devices/pci0000:00/0000:00:06.0", "SEQNUM": "x"})
    assert (ev.action, ev.bdf, ev.driver, ev.ids, ev.seqnum) == ("remove", "0000:00:06.0", None, None, None)


def _pokeable_device() -> str | None:
    base = "/sys/bus/pci/devices"
    for bdf in sorted(os.listdir(base)) if os.path.isdir(base) else []:
        if os.access(os.path.join(base, bdf, "uevent"), os.W_OK):
            return bdf
    return None


def _poke_later(bdf: str, delay: float = 0.3) -> threading.Thread:
    def poke():
        time.sleep(delay)
        with open(f"/sys/bus/pci/devices/{bdf}/uevent", "w") as f:
            f.write("change")
    t = threading.Thread(target=poke)
    t.start()
    return t


def test_monitor_sees_a_change_uevent_of_this_machine():
    bdf = _pokeable_device()
    if bdf is None:
        pytest.skip("no writable /sys/bus/pci/devices/*/uevent here (needs root and a PCI device)")
    with Watcher() as w:
        t = _poke_later(bdf)
        got = list(events(count=1, timeout=10, watcher=w))
        t.join()
    assert [(e.action, e.bdf) for e in got] == [("change", bdf)]


def test_watch_cli_prints_json_lines_and_stops_at_count():
    bdf = _pokeable_device()
    if bdf is None:
        pytest.skip("no writable /sys/bus/pci/devices/*/uevent here (needs root and a PCI device)")
    out = io.StringIO()
    t = _poke_later(bdf, 1.0)       # after the CLI's monitor has started
    rc = inspect.main(["--watch", "--json", "--count", "1", "--timeout", "15"], out=out)
    t.join()
    assert rc == 0
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["bdf"] == bdf


def test_watch_ends_at_the_timeout():
    t0 = time.monotonic()
    list(events(count=None, timeout=0.3))
    elapsed = time.monotonic() - t0
    assert 0.29 <= elapsed < 5      # no count: only the timeout can have ended it
