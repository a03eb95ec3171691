"""Assignment and release against a writable copy of the captured guest tree,
with vfio.host.simulate standing in for the kernel's driver core (the same
sequences run on the real kernel in tests/kernel/test_host_assign.py).

Devices of fixtures/sysfs/q35-guest used here: e1000e 0000:01:00.0 (free, group
9), nvme 0000:00:04.0 (namespace mounted), e1000 0000:00:06.0 (up with an
address), ICH9 0000:00:1f.{0,2,3} (one group, three drivers), boot VGA 00:07.0.
"""

from __future__ import annotations

import errno
import io
import json
import multiprocessing
import os
import shutil
import time

import pytest

from vfio.errors import VfioError
from vfio.host import assign_cli
from vfio.host.assign import (AssignmentFailed, AssignmentRefused, Assigner, StateFile, StateLocked,
                              libvirt_xml, qemu_args)
from vfio.host.simulate import FaultyWrites, SimulatedSysfs
from vfio.host.sysfs import DryRunSysfs, Host, HostError

from tests.paths import GUEST_TREE as GUEST
E1000E = "0000:01:00.0"


def snapshot(root: str) -> dict:
    """Everything assignment may change: driver and override of every device, VFIO nodes."""
    h = Host(root)
    devs = {d.bdf: (d.driver, d.driver_override) for d in h.devices()}
    nodes = sorted(os.listdir(os.path.join(root, "dev/vfio"))) if os.path.isdir(os.path.join(root, "dev/vfio")) else []
    return {"devices": devs, "nodes": nodes}


def recorded(root: str) -> dict:
    p = os.path.join(root, "run/vfio-assign/state.json")
    return json.load(open(p))["devices"] if os.path.exists(p) else {}


def Faulty(root, fail_at, after=False, sim_class=SimulatedSysfs):
    return FaultyWrites(sim_class(root), fail_at, after)


# ---- the happy path ------------------------------------------------------------------

def test_assign_and_release_round_trip(tree):
    before = snapshot(tree)
    sim = SimulatedSysfs(tree)
    a = Assigner(Host(sysfs=sim))
    plan = a.assign([E1000E], owner=(107, 108))
    assert [d.bdf for d in plan.devices] == [E1000E]
    h = Host(tree)
    assert h.device(E1000E).driver == "vfio-pci" and h.device(E1000E).driver_override == "vfio-pci"
    assert "9" in snapshot(tree)["nodes"]
    # the kernel lists vfio-dev/vfio0 in sysfs but, without VFIO_DEVICE_CDEV, makes no node to chown
    assert os.listdir(os.path.join(tree, h.device(E1000E).path, "vfio-dev")) == ["vfio0"]
    assert sim.owners == {"/dev/vfio/9": (107, 108)}
    rec = recorded(tree)[E1000E]
    assert rec["driver"] == "e1000e" and rec["driver_override"] is None and rec["status"] == "assigned"
    assert [w for w, _ in sim.writes] == ["/sys/bus/pci/drivers/e1000e/unbind",
                                        f"/sys/bus/pci/devices/{E1000E}/driver_override",
                                        "/sys/bus/pci/drivers_probe"]
    a.release()
    assert snapshot(tree) == before
    assert recorded(tree) == {}


def test_dry_run_prints_the_exact_writes_and_changes_nothing(tree):
    before = snapshot(tree)
    out = io.StringIO()
    rc = assign_cli.main(["bind", "8086:10d3", "--root", tree, "--dry-run", "--user", "0", "--group", "0"], out=out)
    assert rc == 0
    assert out.getvalue().splitlines()[1:] == [
        f"echo {E1000E} > /sys/bus/pci/drivers/e1000e/unbind",
        f"echo vfio-pci > /sys/bus/pci/devices/{E1000E}/driver_override",
        f"echo {E1000E} > /sys/bus/pci/drivers_probe",
        "chown 0:0 /dev/vfio/9",
        f"chown 0:0 /dev/vfio/devices/vfio* (cdev of {E1000E}, if any)"]
    assert snapshot(tree) == before and recorded(tree) == {}


def test_cdev_nodes_get_the_owner_too(tree):
    os.makedirs(os.path.join(tree, "dev/vfio/devices"))      # a kernel with VFIO_DEVICE_CDEV
    before = snapshot(tree)
    sim = SimulatedSysfs(tree)
    a = Assigner(Host(sysfs=sim))
    a.assign([E1000E, "00:06.0"], owner=(107, 108), force=True)
    assert sim.owners == {"/dev/vfio/9": (107, 108), "/dev/vfio/6": (107, 108),
                          "/dev/vfio/devices/vfio0": (107, 108), "/dev/vfio/devices/vfio1": (107, 108)}
    a.release()
    assert snapshot(tree) == before and os.listdir(os.path.join(tree, "dev/vfio/devices")) == []


def test_dry_run_matches_what_the_real_run_writes(tree):
    dry = DryRunSysfs(tree)
    plan = Assigner(Host(sysfs=dry)).assign(["00:1f.2"], whole_group=True, dry_run=True)
    sim = SimulatedSysfs(tree)
    Assigner(Host(sysfs=sim)).assign(["00:1f.2"], whole_group=True)
    assert [(a.path, a.value) for a in plan.actions(Host(tree))] == sim.writes


def test_companions_are_named_or_taken_with_whole_group(tree):
    before = snapshot(tree)
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    with pytest.raises(AssignmentRefused) as e:
        a.assign(["00:1f.2"])
    msg = str(e.value)
    assert "IOMMU group 8" in msg and "0000:00:1f.0 (lpc_ich)" in msg and "0000:00:1f.3 (i801_smbus)" in msg
    assert snapshot(tree) == before
    a.assign(["00:1f.2"], whole_group=True)
    h = Host(tree)
    assert [h.device(b).driver for b in ("00:1f.0", "00:1f.2", "00:1f.3")] == ["vfio-pci"] * 3
    assert sorted(recorded(tree)) == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    a.release(["00:1f.0", "00:1f.2", "00:1f.3"])
    assert snapshot(tree) == before


def test_naming_every_member_needs_no_flag(tree):
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    a.assign(["00:1f.0", "00:1f.2", "00:1f.3"])
    assert Host(tree).device("00:1f.3").driver == "vfio-pci"


@pytest.mark.parametrize("bdf,why", [
    ("00:04.0", "/dev/nvme0n1 is mounted on /mnt/nv"),
    ("00:06.0", "network interface eth1 is up with 192.0.2.0/24"),
    ("00:07.0", "boot VGA"),
])
def test_devices_in_use_are_refused_unless_forced(tree, bdf, why):
    before = snapshot(tree)
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    with pytest.raises(AssignmentRefused, match="in use") as e:
        a.assign([bdf])
    assert why in str(e.value)
    assert snapshot(tree) == before and recorded(tree) == {}
    a.assign([bdf], force=True)
    assert Host(tree).device(bdf).driver == "vfio-pci"


def test_no_iommu_group_is_refused():
    virtio = os.path.join(os.path.dirname(GUEST), "host-virtio")
    with pytest.raises(AssignmentRefused, match="no IOMMU group"):
        Assigner(Host(sysfs=DryRunSysfs(virtio))).plan_assign(["00:04.0"])


def test_already_assigned_devices_are_skipped(tree):
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    plan = a.assign(["1234:11e8"])
    assert plan.devices == [] and plan.skipped == [("0000:00:03.0", "already on vfio-pci")]
    assert recorded(tree) == {}


def test_vfio_pci_is_loaded_when_missing(tree):
    # the tree without vfio-pci: edu unbound, module unloaded
    sim = SimulatedSysfs(tree)
    sim.write("sys/bus/pci/drivers/vfio-pci/unbind", "0000:00:03.0")
    shutil.rmtree(os.path.join(tree, "sys/bus/pci/drivers/vfio-pci"))
    plan = Assigner(Host(sysfs=DryRunSysfs(tree))).plan_assign([E1000E])
    assert str(plan.actions(Host(tree))[0]) == "modprobe vfio-pci"
    Assigner(Host(sysfs=sim)).assign([E1000E])
    assert sim.modprobed == ["vfio-pci"] and Host(tree).device(E1000E).driver == "vfio-pci"


def test_release_refuses_devices_it_did_not_assign(tree):
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    with pytest.raises(AssignmentRefused, match="not assigned by vfio-assign"):
        a.release(["00:03.0"])


def test_release_restores_an_earlier_override(tree):
    sim = SimulatedSysfs(tree, native={E1000E: ["e1000e"]})
    sim.write(f"sys/bus/pci/devices/{E1000E}/driver_override", "e1000e")
    before = snapshot(tree)
    a = Assigner(Host(sysfs=sim))
    a.assign([E1000E])
    a.release([E1000E])
    assert snapshot(tree) == before and before["devices"][E1000E] == ("e1000e", "e1000e")


# ---- faults at every step ---------------------------------------------------------------

def _count_writes(tree, tmp_path, call):
    probe = tmp_path / "probe"
    shutil.copytree(tree, probe, symlinks=True)
    sim = SimulatedSysfs(str(probe))
    call(Assigner(Host(sysfs=sim)))
    return len(sim.writes)


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
def test_a_fault_at_any_assignment_step_leaves_everything_as_it_was(tree, tmp_path, after):
    specs = ["00:1f.0", "00:1f.2", "00:1f.3"]
    n = _count_writes(tree, tmp_path, lambda a: a.assign(specs))
    assert n == 9
    before = snapshot(tree)
    for k in range(1, n + 1):
        sim = Faulty(tree, k, after)
        with pytest.raises(AssignmentFailed) as e:
            Assigner(Host(sysfs=sim)).assign(specs)
        assert e.value.rollback_errors == [], f"fault at write {k}"
        assert "rolled back" in str(e.value) and f"injected fault at write {k}" in str(e.value)
        assert snapshot(tree) == before, f"fault at write {k} ({'after' if after else 'before'})"
        assert recorded(tree) == {}


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
def test_a_fault_at_any_release_step_leaves_the_devices_assigned(tree, tmp_path, after):
    specs = ["00:1f.0", "00:1f.2", "00:1f.3"]
    original = snapshot(tree)
    Assigner(Host(sysfs=SimulatedSysfs(tree))).assign(specs)
    n = _count_writes(tree, tmp_path, lambda a: a.release())
    assert n == 9
    assigned = snapshot(tree)
    state = recorded(tree)
    for k in range(1, n + 1):
        with pytest.raises(AssignmentFailed) as e:
            Assigner(Host(sysfs=Faulty(tree, k, after))).release()
        assert e.value.rollback_errors == []
        assert snapshot(tree) == assigned and recorded(tree) == state
    Assigner(Host(sysfs=SimulatedSysfs(tree))).release()     # and a clean release still works
    assert snapshot(tree) == original and recorded(tree) == {}


class NoVfioProbe(SimulatedSysfs):
    """vfio-pci's probe fails: drivers_probe succeeds but nothing binds (as the kernel does)."""

    def _attach(self, drv, bdf):
        if drv == "vfio-pci" and bdf == E1000E:
            return
        super()._attach(drv, bdf)


def test_a_device_that_does_not_bind_is_rolled_back(tree):
    before = snapshot(tree)
    with pytest.raises(AssignmentFailed, match=r"did not bind to vfio-pci.*driver now: none") as e:
        Assigner(Host(sysfs=NoVfioProbe(tree))).assign([E1000E])
    assert e.value.rollback_errors == []
    assert snapshot(tree) == before and recorded(tree) == {}


class NoRebind(SimulatedSysfs):
    """e1000e refuses to bind again (its probe fails, say)."""

    def write(self, rel, value):
        if rel.endswith("e1000e/bind"):
            raise VfioError(errno.ENODEV, f"writing {value!r} to /{rel}")
        super().write(rel, value)


def test_an_incomplete_rollback_is_reported(tree):
    with pytest.raises(AssignmentFailed) as e:
        Assigner(Host(sysfs=Faulty(tree, 2, sim_class=NoRebind))).assign([E1000E])
    assert len(e.value.rollback_errors) == 1 and "unbind 0000:01:00.0 from e1000e" in e.value.rollback_errors[0]
    assert "ROLLBACK INCOMPLETE" in str(e.value)


def test_cli_exit_codes(tree):
    out = io.StringIO()
    assert assign_cli.main(["bind", "00:04.0", "--root", tree], out=out) == assign_cli.EXIT_REFUSED
    assert assign_cli.main(["bind", "00:09.0", "--root", tree], out=out) == assign_cli.EXIT_REFUSED
    assert assign_cli.main(["release", "--root", tree], out=out) == assign_cli.EXIT_REFUSED
    # a real Sysfs on a captured tree: the "kernel" never binds, so the run fails and rolls back
    assert assign_cli.main(["bind", E1000E, "--root", tree], out=out) == assign_cli.EXIT_FAILED
    assert recorded(tree) == {}


def test_cli_json_has_qemu_and_libvirt(tree):
    out = io.StringIO()
    assert assign_cli.main(["bind", E1000E, "--root", tree, "--dry-run", "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["qemu_args"] == ["-device", f"vfio-pci,host={E1000E}"]
    assert "<address domain='0x0000' bus='0x01' slot='0x00' function='0x0'/>" in doc["libvirt_hostdev"][0]
    assert [w["path"] for w in doc["writes"]][0] == "/sys/bus/pci/drivers/e1000e/unbind"


def test_qemu_and_libvirt_text():
    assert qemu_args(["0000:00:04.0", "0000:00:05.0"]) == ["-device", "vfio-pci,host=0000:00:04.0",
                                                         "-device", "vfio-pci,host=0000:00:05.0"]
    assert libvirt_xml("0000:3b:1f.7").splitlines()[2].strip() == \
        "<address domain='0x0000' bus='0x3b' slot='0x1f' function='0x7'/>"


# ---- the state file ----------------------------------------------------------------

def test_corrupt_state_file_is_named(tmp_path):
    p = tmp_path / "state.json"
    p.write_text('{"schema": "vfio-assign-state/1", "devices": {')
    with StateFile(str(p)) as st, pytest.raises(HostError, match=r"state.json is corrupt: line 1 column"):
        st.load()
    p.write_text('{"devices": {}}')
    with StateFile(str(p)) as st, pytest.raises(HostError, match="not a vfio-assign-state/1 file"):
        st.load()


def test_state_is_replaced_atomically(tmp_path):
    p = tmp_path / "state.json"
    with StateFile(str(p)) as st:
        rec = {"driver": "e1000e", "driver_override": None, "status": "assigned"}
        st.save({"schema": "vfio-assign-state/1", "devices": {"0000:00:01.0": rec}})
        ino = os.stat(p).st_ino
        st.save({"schema": "vfio-assign-state/1", "devices": {"0000:00:02.0": rec}})
        assert os.stat(p).st_ino != ino           # a new file renamed over, never rewritten in place
        assert st.load()["devices"] == {"0000:00:02.0": rec}
    assert sorted(os.listdir(tmp_path)) == ["state.json", "state.json.lock"]


def _hold_lock(path, ready, release):
    with StateFile(path):
        ready.set()
        release.wait(10)


def test_a_second_run_waits_or_fails_on_the_lock(tmp_path):
    path = str(tmp_path / "state.json")
    ctx = multiprocessing.get_context("fork")
    ready, release = ctx.Event(), ctx.Event()
    p = ctx.Process(target=_hold_lock, args=(path, ready, release))
    p.start()
    try:
        assert ready.wait(10)
        with pytest.raises(StateLocked, match="locked by another vfio-assign run"):
            StateFile(path, wait=False).__enter__()
        t0 = time.monotonic()
        ctx.Process(target=lambda: (time.sleep(0.3), release.set())).start()
        with StateFile(path, wait=True):
            waited = time.monotonic() - t0
        assert waited >= 0.25
    finally:
        release.set()
        p.join(10)


def _assign_one(root, spec, results):
    try:
        Assigner(Host(sysfs=SimulatedSysfs(root))).assign([spec], force=True)
        results.put((spec, "ok"))
    except Exception as e:            # reported to the parent, which asserts on it
        results.put((spec, repr(e)))


def test_concurrent_runs_both_land_in_the_state_file(tree):
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    procs = [ctx.Process(target=_assign_one, args=(tree, s, results)) for s in (E1000E, "00:06.0")]
    for p in procs:
        p.start()
    for p in procs:
        p.join(30)
    got = dict(results.get(timeout=5) for _ in procs)
    assert got == {E1000E: "ok", "00:06.0": "ok"}
    assert sorted(recorded(tree)) == ["0000:00:06.0", E1000E]
