"""The QEMU arguments vfio-assign prints are what QEMU needs: started with them
(``-S``: nothing runs, the devices are realized), QEMU shows the functions of
one multifunction host device as one guest device -- one slot, functions 0
and 1 -- through QMP ``query-pci``.

Needs a multifunction device in the guest: two edu functions in one slot (one
IOMMU group, no ACS), which the host-tools leg adds with::

    tools/vfio-harness --devices edu,nvme,e1000e --bind edu \\
        --qemu-arg=-device --qemu-arg=edu,addr=0x6.0,multifunction=on \\
        --qemu-arg=-device --qemu-arg=edu,addr=0x6.1 -- python3 -m pytest -m native_drivers ...

The devices are found through sysfs, not by address.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest

from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

EDU = "1234:11e8"
HOW = ("needs two edu functions in one slot: tools/vfio-harness ... --qemu-arg=-device "
       "--qemu-arg=edu,addr=0x6.0,multifunction=on --qemu-arg=-device --qemu-arg=edu,addr=0x6.1")


def _multifunction_edu(host: Host) -> list[str]:
    slots: dict[str, list[str]] = {}
    for d in host.devices():
        if d.ids == EDU:
            slots.setdefault(d.bdf.rsplit(".", 1)[0], []).append(d.bdf)
    multi = [sorted(v) for v in slots.values() if len(v) >= 2]
    if not multi:
        pytest.fail(f"no slot with two edu functions (edu at {sorted(sum(slots.values(), []))}); {HOW}", pytrace=False)
    return multi[0]


class Qmp:
    def __init__(self, path: str, deadline: float):
        while True:
            try:
                self.s = socket.socket(socket.AF_UNIX)
                self.s.connect(path)
                break
            except OSError:
                self.s.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        self.f = self.s.makefile("rw")
        assert "QMP" in json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name: str):
        self.f.write(json.dumps({"execute": name}) + "\n")
        self.f.flush()
        while True:
            msg = json.loads(self.f.readline())
            if "return" in msg or "error" in msg:
                assert "error" not in msg, msg
                return msg["return"]


def test_qemu_takes_a_multifunction_group_as_one_device(tmp_path):
    host = Host("/")
    fns = _multifunction_edu(host)
    groups = {host.device(b).iommu_group for b in fns}
    assert len(groups) == 1, f"{fns} are in groups {groups}: the multifunction premise (no ACS) does not hold"
    state = str(tmp_path / "state.json")
    r = subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", "bind", *fns[:2], "--state", state, "--json"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    args = doc["qemu_args"]
    assert args == ["-device", f"vfio-pci,host={fns[0]},addr=0x10.0,multifunction=on",
                    "-device", f"vfio-pci,host={fns[1]},addr=0x10.1"]
    qemu = shutil.which("qemu-system-x86_64")
    assert qemu, "qemu-system-x86_64 is not on PATH in the guest"
    sock = str(tmp_path / "qmp.sock")
    p = subprocess.Popen([qemu, "-machine", "q35", "-accel", "tcg", "-m", "64", "-nodefaults", "-display", "none",
                          "-S", "-qmp", f"unix:{sock},server=on,wait=off", *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        try:
            q = Qmp(sock, time.monotonic() + 240)
        except OSError:
            p.kill()
            out, err = p.communicate(timeout=30)
            pytest.fail(f"QEMU did not start with {args}: {err}", pytrace=False)
        buses = q.cmd("query-pci")
        found = [(d["slot"], d["function"]) for bus in buses for d in bus["devices"]
                 if (d["id"]["vendor"], d["id"]["device"]) == (0x1234, 0x11e8)]
        assert sorted(found) == [(0x10, 0), (0x10, 1)], buses
        q.cmd("quit")
        p.wait(60)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait(30)
        subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", "release", *fns[:2], "--state", state],
                       capture_output=True, text=True, timeout=300)
