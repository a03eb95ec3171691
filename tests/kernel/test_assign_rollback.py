"""What a failed vfio-assign run reports on the real kernel.

``driver_override`` of the e1000e is made read-only (a read-only bind mount
over the attribute: writes fail with EROFS, reads say "(null)" as before).
The bind then fails at its second step; the rollback rebinds e1000e, and the
one undo that cannot write (the override) has nothing to undo.  The run must
say the device is back as it was, exit 1 -- not 3, "ROLLBACK INCOMPLETE".
Host-tools leg (e1000e on its own driver).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

from vfio.host.sysfs import Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]


def _sh(*args):
    r = subprocess.run(args, capture_output=True, text=True)
    assert r.returncode == 0, f"{args}: {r.stderr}"


def test_a_read_only_override_reports_what_happened(tmp_path):
    host = Host("/")
    found = [d for d in host.devices() if d.ids == "8086:10d3"]
    assert len(found) == 1 and found[0].driver == "e1000e", "host-tools leg: one e1000e on e1000e"
    bdf = found[0].bdf
    attr = f"/sys/bus/pci/devices/{bdf}/driver_override"
    fake = tmp_path / "driver_override"
    fake.write_text("(null)\n")
    _sh("mount", "--bind", str(fake), attr)
    try:
        _sh("mount", "-o", "remount,ro,bind", attr)
        r = subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", "bind", bdf,
                            "--state", str(tmp_path / "state.json")], capture_output=True, text=True, timeout=300)
    finally:
        _sh("umount", attr)
    assert r.returncode == 1, r.stderr
    assert "ROLLBACK INCOMPLETE" not in r.stderr
    assert "rolled back: every device is as it was before" in r.stderr
    assert f"{bdf}: on e1000e, as before" in r.stderr
    d = host.device(bdf)
    assert (d.driver, d.driver_override) == ("e1000e", None)
