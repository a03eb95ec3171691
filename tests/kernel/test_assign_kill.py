"""vfio-assign killed (SIGKILL) at every sysfs write of a bind and of a release,
on the real kernel: after each kill ``status`` must match sysfs and one
``release --all`` must put the devices back on their own drivers.

The kill points are the tool's own write points, not timing: the one sysfs
write chokepoint (vfio.host.sysfs.Sysfs.write) SIGKILLs the process before
the Nth write when ``VFIO_FAULT_KILL_AT_WRITE=N`` (``N+``: just after it), and
``--dry-run --json`` lists a plan's writes.  Victims: nvme and e1000e on their
native drivers (the host-tools leg)::

    tools/vfio-harness --devices edu,nvme,e1000e --bind edu -- \\
        python3 -m pytest -p no:benchmark -m native_drivers tests/kernel/test_assign_kill.py
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.kernel.kernel_harness import harness_bdfs
from vfio.host import assign_cli
from vfio.host.assign import Assigner
from vfio.host.sysfs import FAULT_ENV, Host

pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

NATIVE = {"1b36:0010": "nvme", "8086:10d3": "e1000e"}
HOW = "run in the host-tools leg: tools/vfio-harness --devices edu,nvme,e1000e --bind edu -- ..."


@pytest.fixture
def victims():
    host = Host("/")
    # the harness's own nvme and e1000e: the leg's nvme-sriov PF shares nvme's ID
    mine = None if harness_bdfs("nvme") is None else set(harness_bdfs("nvme") + harness_bdfs("e1000e"))
    found = {d.bdf: NATIVE[d.ids] for d in host.devices() if d.ids in NATIVE and (mine is None or d.bdf in mine)}
    if sorted(found.values()) != ["e1000e", "nvme"]:
        pytest.fail(f"want one nvme and one e1000e, found {found}; {HOW}", pytrace=False)
    for b, drv in found.items():
        d = host.device(b)
        if (d.driver, d.driver_override) != (drv, None):
            pytest.fail(f"{b} starts on {d.driver} (override {d.driver_override}), not {drv}; {HOW}", pytrace=False)
    yield found
    for b, drv in found.items():
        d = host.device(b)
        assert (d.driver, d.driver_override) == (drv, None), f"{b} left on {d.driver}"


def _killed(state, *args, kill: str):
    """Run vfio-assign in its own process with the kill point set; it must die there."""
    env = {**os.environ, FAULT_ENV: kill}
    r = subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", *args, "--state", state],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == -signal.SIGKILL, f"kill at {kill}: {r.returncode} {r.stderr}"


def _cli(capsys, state, *args) -> tuple[int, str, str]:
    """vfio-assign's main in this process (no start-up cost under TCG): status, out, err."""
    assert FAULT_ENV not in os.environ
    capsys.readouterr()
    out = io.StringIO()
    rc = assign_cli.main([*args, "--state", state], out=out)
    return rc, out.getvalue(), capsys.readouterr().err


def _write_points(capsys, state, *args) -> int:
    rc, out, err = _cli(capsys, state, *args, "--dry-run", "--json")
    assert rc == 0, err
    return sum(1 for w in json.loads(out)["writes"] if w["kind"] == "write")


def _status_matches_sysfs(capsys, state) -> dict:
    rc, out, err = _cli(capsys, state, "status", "--json")
    assert rc == 0, err
    devs = json.loads(out)["devices"]
    host = Host("/")
    for b, rec in devs.items():
        d = host.device(b)
        now = {"driver": d.driver, "driver_override": d.driver_override}
        assert rec["now"] == now, f"status says {b} is {rec['now']}, sysfs {now}"
        clean = now == {"driver": "vfio-pci", "driver_override": "vfio-pci"} and rec["status"] == "assigned"
        assert (rec["condition"] == "assigned") == clean, rec
        if rec["condition"] == "restored":
            assert (d.driver, d.driver_override) == (rec["driver"], rec["driver_override"])
    return devs


def _release_restores(capsys, state, victims, killed_at) -> str:
    rc, _, err = _cli(capsys, state, "release", "--all")
    assert rc == 0, f"kill at {killed_at}: {err}"
    host = Host("/")
    for b, drv in victims.items():
        d = host.device(b)
        assert (d.driver, d.driver_override) == (drv, None), f"kill at {killed_at}: {b} on {d.driver}"
    assert Assigner(Host("/"), state).status()["devices"] == {}
    return err


def _points(n: int) -> list[str]:
    """Before every write, and just after the last (the kernel done, the record not)."""
    return [str(k) for k in range(1, n + 1)] + [f"{n}+"]


def test_kill_at_every_write_of_bind(victims, tmp_path, capsys):
    state = str(tmp_path / "state.json")
    bdfs = sorted(victims)
    n = _write_points(capsys, state, "bind", *bdfs)
    assert n == 6                                # unbind, override, probe for each
    for p in _points(n):
        _killed(state, "bind", *bdfs, kill=p)
        devs = _status_matches_sysfs(capsys, state)
        half = [b for b, rec in devs.items() if rec["condition"] == "interrupted"]
        err = _release_restores(capsys, state, victims, p)
        for b in half:                           # the next start said so
            assert f"note: {b}: record says 'assigning'" in err, err
    with capsys.disabled():
        print(f"bind: {len(_points(n))} kill points")


def test_kill_at_every_write_of_release(victims, tmp_path, capsys):
    state = str(tmp_path / "state.json")
    bdfs = sorted(victims)
    for p in _points(6):
        Assigner(Host("/"), state).assign(bdfs)
        if p == "1":
            assert _write_points(capsys, state, "release", "--all") == 6
        _killed(state, "release", "--all", kill=p)
        devs = _status_matches_sysfs(capsys, state)
        assert sorted(devs) == bdfs                 # nothing forgotten before it is back
        half = [b for b, rec in devs.items() if rec["condition"] == "interrupted"]
        err = _release_restores(capsys, state, victims, p)
        for b in half:
            assert f"note: {b}: record says 'releasing'" in err, err
    with capsys.disabled():
        print(f"release: {len(_points(6))} kill points")
