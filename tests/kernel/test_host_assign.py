"""Assignment, release, inspection and uevents against the real kernel.

Runs inside the tools/vfio-harness guest started with nvme and e1000e on their
own drivers and edu on vfio-pci (the ``host-tools`` leg of tools/run-kernel-tests)::

    tools/vfio-harness --devices edu,nvme,e1000e --bind edu -- \\
        python3 -m pytest -m native_drivers tests/kernel/test_host_assign.py

This is the proof for what tests/unit/test_host_assign.py checks on the
simulation (vfio.host.simulate): the same write sequences, rollback after a
fault injected at every step, the state file, the safety refusals.
"""

from __future__ import annotations

import multiprocessing
import os
import subprocess

import pytest

from tests.kernel.kernel_harness import harness_bdfs
from vfio.host import inspect
from vfio.host.assign import AssignmentFailed, AssignmentRefused, Assigner
from vfio.host.simulate import FaultyWrites
from vfio.host.sysfs import Host, Sysfs
from vfio.host.watch import Watcher

# native_drivers: the host-tools leg of tools/run-kernel-tests (nvme, e1000e on their own drivers)
pytestmark = [pytest.mark.kernel, pytest.mark.native_drivers]

NVME, E1000E, EDU = "1b36:0010", "8086:10d3", "1234:11e8"
NATIVE = {NVME: "nvme", E1000E: "e1000e"}
HOW = ("run with: tools/run-kernel-tests --leg host-tools, or tools/vfio-harness --devices edu,nvme,e1000e "
       "--bind edu -- python3 -m pytest -m native_drivers ...")


def _one(host: Host, ids: str):
    # the harness's nvme only: the leg's nvme-sriov PF (and its VFs) share its ID
    mine = harness_bdfs(NATIVE[ids])
    found = [d for d in host.devices() if d.ids == ids and (mine is None or d.bdf in mine)]
    if len(found) != 1:
        pytest.fail(f"expected one {ids} device in the guest, found {[d.bdf for d in found]}; {HOW}", pytrace=False)
    return found[0]


@pytest.fixture
def host() -> Host:
    return Host("/")


@pytest.fixture
def natives(host):
    """BDFs of nvme and e1000e, checked to be on their own drivers before and after each test."""
    devs = {ids: _one(host, ids) for ids in NATIVE}
    for ids, d in devs.items():
        if d.driver != NATIVE[ids]:
            pytest.fail(f"{d.bdf} [{ids}] starts on {d.driver}, not {NATIVE[ids]}; {HOW}", pytrace=False)
    yield {ids: d.bdf for ids, d in devs.items()}
    for ids, d in devs.items():
        now = host.device(d.bdf)
        assert (now.driver, now.driver_override) == (NATIVE[ids], None), f"{d.bdf} left on {now.driver}"


@pytest.fixture
def state(tmp_path) -> str:
    return str(tmp_path / "state.json")


def snapshot(host: Host) -> dict:
    return {d.bdf: (d.driver, d.driver_override) for d in host.devices()}


def Faulty(fail_at: int, after: bool) -> FaultyWrites:
    """The real sysfs, with the ``fail_at``-th write failing once, before or after the kernel acted."""
    return FaultyWrites(Sysfs("/"), fail_at, after)


def test_assign_open_release(host, natives, state):
    """nvme and e1000e: to vfio-pci, opened through VFIO, back on their drivers; uevents seen."""
    import vfio
    bdfs = sorted(natives.values())
    seen = []
    with Watcher() as w:
        a = Assigner(host, state)
        plan = a.assign(bdfs, owner=(65534, 65534))
        assert sorted(d.bdf for d in plan.devices) == bdfs
        for b in bdfs:
            d = host.device(b)
            assert (d.driver, d.driver_override) == ("vfio-pci", "vfio-pci")
            st = os.stat(f"/dev/vfio/{d.iommu_group}")
            assert (st.st_uid, st.st_gid) == (65534, 65534)
            with vfio.open_pci_device(b) as dev:
                assert dev.info.is_pci and dev.interface == "container"
                vid = dev.config.read16(0)
                assert f"{vid:04x}" == d.ids.split(":")[0]
                rep = inspect.vfio_report(dev)
                assert rep["num_regions"] >= 9 and rep["regions"][7]["name"] == "CONFIG"
        a.release(bdfs)
        while True:
            ev = w.poll(2.0)
            if ev is None:
                break
            seen.append((ev.action, ev.bdf, ev.driver))
    for b in bdfs:
        assert ("unbind", b, None) in seen or any(e[:2] == ("unbind", b) for e in seen)
        assert ("bind", b, "vfio-pci") in seen
        assert ("bind", b, NATIVE[host.device(b).ids]) in seen
    assert Assigner(host, state).status()["devices"] == {}


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
def test_a_fault_at_each_assignment_step_leaves_everything_as_it_was(host, natives, state, after):
    bdfs = sorted(natives.values())
    before = snapshot(host)
    n = 6                               # 3 writes a device: unbind, override, probe
    for k in range(1, n + 1):
        s = Faulty(k, after)
        with pytest.raises(AssignmentFailed) as e:
            Assigner(Host(sysfs=s), state).assign(bdfs)
        assert e.value.rollback_errors == [], f"fault at write {k}: {e.value}"
        assert snapshot(host) == before, f"fault at write {k} {'after' if after else 'before'} the kernel acted"
        assert Assigner(host, state).status()["devices"] == {}
    assert s.n > n                      # the last run did reach its rollback writes


@pytest.mark.parametrize("after", [False, True], ids=["before-write", "after-write"])
def test_a_fault_at_each_release_step_leaves_them_assigned(host, natives, state, after):
    bdfs = sorted(natives.values())
    Assigner(host, state).assign(bdfs)
    try:
        assigned = snapshot(host)
        for k in range(1, 7):
            with pytest.raises(AssignmentFailed) as e:
                Assigner(Host(sysfs=Faulty(k, after)), state).release()
            assert e.value.rollback_errors == []
            assert snapshot(host) == assigned
    finally:
        Assigner(host, state).release()


def test_dry_run_writes_are_the_real_ones(host, natives, state):
    from vfio.host.sysfs import DryRunSysfs
    bdf = natives[E1000E]
    plan = Assigner(Host(sysfs=DryRunSysfs("/")), state).assign([bdf], dry_run=True)
    real = Faulty(0, False)
    Assigner(Host(sysfs=real), state).assign([bdf])
    try:
        assert [(a.path, a.value) for a in plan.actions(host)] == [("/" + r, v) for r, v in real.writes]
    finally:
        Assigner(host, state).release()


def _ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True)


def test_a_configured_interface_is_refused_until_forced(host, natives, state):
    bdf = natives[E1000E]
    ifaces = os.listdir(f"/sys/bus/pci/devices/{bdf}/net")
    assert len(ifaces) == 1
    ifc = ifaces[0]
    _ip("link", "set", ifc, "up")
    _ip("addr", "add", "192.0.2.77/24", "dev", ifc)
    try:
        with pytest.raises(AssignmentRefused, match=f"network interface {ifc} is up with 192.0.2.0/24"):
            Assigner(host, state).assign([bdf])
        assert host.device(bdf).driver == "e1000e"
    finally:
        _ip("addr", "flush", "dev", ifc)
        _ip("link", "set", ifc, "down")
    Assigner(host, state).assign([bdf])         # free now
    Assigner(host, state).release()


def test_release_refuses_while_the_group_is_open(host, natives, state):
    import vfio
    bdf = natives[NVME]
    a = Assigner(host, state)
    a.assign([bdf])
    try:
        with vfio.open_pci_device(bdf):
            with pytest.raises(AssignmentRefused, match="held open by another process"):
                a.release([bdf])
            assert host.device(bdf).driver == "vfio-pci"
    finally:
        a.release([bdf])


def _assign_in_child(state, bdf, q):
    try:
        Assigner(Host("/"), state).assign([bdf])
        q.put((bdf, "ok"))
    except Exception as e:        # reported to the parent, which asserts on it
        q.put((bdf, repr(e)))


def test_concurrent_runs_share_the_state_file(host, natives, state):
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_assign_in_child, args=(state, b, q)) for b in natives.values()]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    try:
        assert dict(q.get(timeout=5) for _ in procs) == {b: "ok" for b in natives.values()}
        assert sorted(Assigner(host, state).status()["devices"]) == sorted(natives.values())
    finally:
        Assigner(host, state).release()


def test_inspect_asks_the_kernel_and_shows_vfio_regions(host, natives, edu_bdf):
    edu = host.device(edu_bdf)         # the leg may add more edu functions (a multifunction slot)
    assert edu.driver == "vfio-pci", HOW
    rep = inspect.host_report(host)
    assert rep["iommu"] is True and rep["interfaces"]["container"] is True
    g = {x["group"]: x for x in rep["groups"]}[edu.iommu_group]
    assert g["viable"] is True and g["viability_source"] == "kernel"
    d = inspect.device_report(host, edu)
    assert d["vfio_error"] is None, d["vfio_error"]
    v = d["vfio"]
    assert v["interface"] == "container" and v["num_regions"] == 9 and v["num_irqs"] == 5
    assert v["regions"][0]["size"] == 1 << 20 and "mmap" in v["regions"][0]["flag_names"]
    assert v["irqs"][0]["flag_names"] == ["eventfd", "maskable", "automasked"]
    nv = {x["bdf"]: x for x in rep["devices"]}[natives[NVME]]
    assert nv["viable"] is False and "bound to nvme" in nv["why_not_viable"]


def test_cli_end_to_end(natives, state, tmp_path):
    bdf = natives[E1000E]
    env = dict(os.environ)
    run = lambda *a: subprocess.run(["python3", "-m", "vfio.host.assign_cli", *a, "--state", state],
                                    capture_output=True, text=True, env=env, timeout=120)
    r = run("bind", bdf, "--dry-run")
    assert r.returncode == 0 and f"echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override" in r.stdout
    r = run("bind", bdf)
    assert r.returncode == 0, r.stderr
    assert f"-device vfio-pci,host={bdf}" in r.stdout and "<hostdev mode='subsystem'" in r.stdout
    r = subprocess.run(["python3", "-m", "vfio.host.inspect", bdf], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "VFIO (opened through: container)" in r.stdout and "region 7 CONFIG" in r.stdout
    r = run("release", "--all")
    assert r.returncode == 0 and f"{bdf} [8086:10d3] released: now on e1000e" in r.stdout
