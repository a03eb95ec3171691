"""The vfio-assign state file and what a killed run leaves behind, on writable
copies of fixtures/sysfs/q35-guest (vfio.host.simulate stands in for the
driver core; tests/kernel/test_assign_kill.py does the same on the real kernel).
"""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import signal
import subprocess
import sys

import pytest

from vfio.host import assign_cli
from vfio.host.assign import Assigner, Condition, StateCorrupt, StateFile, interrupted
from vfio.host.simulate import SimulatedSysfs
from vfio.host.sysfs import FAULT_ENV, Host

E1000E = "0000:01:00.0"
ICH9 = ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
GOOD = {"driver": "e1000e", "driver_override": None, "ids": "8086:10d3", "iommu_group": "9",
        "status": "assigned", "since": "2026-01-01T00:00:00+00:00", "uid": 0}


def snapshot(root: str) -> dict:
    return {d.bdf: (d.driver, d.driver_override) for d in Host(root).devices()}


def state_path(root: str) -> str:
    return os.path.join(root, "run/vfio-assign/state.json")


def files_under(d: str) -> list:
    return sorted(os.path.relpath(os.path.join(p, f), d) for p, _, fs in os.walk(d) for f in fs)


# ---- a corrupt state file -----------------------------------------------------------

def _doc(devices_json: str) -> bytes:
    return ('{"schema": "vfio-assign-state/1", "devices": ' + devices_json + "}").encode()


CORRUPT = {
    "entry-is-a-number": _doc('{"0000:01:00.0": 5}'),
    "entry-is-a-list": _doc('{"0000:01:00.0": ["e1000e"]}'),
    "driver-is-a-path": _doc('{"0000:01:00.0": {"driver": "../../../x", "driver_override": null, "status": "assigned"}}'),
    "key-not-a-bdf": _doc('{"eth0": {"driver": "e1000e", "driver_override": null, "status": "assigned"}}'),
    "not-utf8": _doc('{"0000:01:00.0": {"driver": "e1000e\xff", "driver_override": null}}').replace(b"\xc3\xbf", b"\xff"),
    "5000-digits": _doc('{"0000:01:00.0": {"uid": ' + "9" * 5000 + "}}"),
    "100000-deep": b"[" * 100000 + b"]" * 100000,
    "truncated": _doc('{"0000:01:00.0": {"driver": "e1'),
}


@pytest.mark.parametrize("cmd", [["status"], ["status", "--json"], ["release", "--all"],
                                 ["release", E1000E], ["bind", E1000E]])
@pytest.mark.parametrize("kind", sorted(CORRUPT))
def test_a_corrupt_state_file_is_refused_and_kept(tree, capsys, kind, cmd):
    p = state_path(tree)
    os.makedirs(os.path.dirname(p))
    with open(p, "wb") as f:
        f.write(CORRUPT[kind])
    before = snapshot(tree)
    rc = assign_cli.main(cmd + ["--root", tree], out=io.StringIO())
    err = capsys.readouterr().err
    assert rc == assign_cli.EXIT_REFUSED, err
    assert f"state file {p} is corrupt" in err and f"mv {p} {p}.corrupt" in err and "Traceback" not in err
    assert open(p, "rb").read() == CORRUPT[kind]                # never overwritten
    assert snapshot(tree) == before


def test_good_entries_load(tmp_path):
    p = tmp_path / "state.json"
    p.write_text(json.dumps({"schema": "vfio-assign-state/1", "devices": {E1000E: GOOD}}))
    with StateFile(str(p), readonly=True) as st:
        assert st.load()["devices"] == {E1000E: GOOD}
    with pytest.raises(StateCorrupt, match="status 'maybe'"):
        p.write_text(json.dumps({"schema": "vfio-assign-state/1", "devices": {E1000E: {**GOOD, "status": "maybe"}}}))
        StateFile(str(p)).load()


def test_a_killed_save_leaves_the_old_record(tree, tmp_path):
    """save() is temp file + fsync + rename: a run killed while saving leaves the previous record whole."""
    p = str(tmp_path / "state.json")
    with StateFile(p) as st:
        st.save({"schema": "vfio-assign-state/1", "devices": {E1000E: GOOD}})
    ctx = multiprocessing.get_context("fork")

    def child():
        import json as j

        def dump(*a, **k):
            a[1].write('{"schema": "vfio-assign-state/1", "dev')
            a[1].flush()
            os.kill(os.getpid(), signal.SIGKILL)
        j.dump = dump
        with StateFile(p) as st:
            st.save({"schema": "vfio-assign-state/1", "devices": {}})
    pr = ctx.Process(target=child)
    pr.start()
    pr.join(30)
    assert pr.exitcode == -signal.SIGKILL
    with StateFile(p, readonly=True) as st:
        assert st.load()["devices"] == {E1000E: GOOD}


# ---- reading commands write nothing ---------------------------------------------------

def test_status_and_dry_runs_create_nothing(tree, capsys):
    before = files_under(tree)
    for cmd in (["status"], ["status", "--json"], ["bind", E1000E, "--dry-run"], ["release", "--all", "--dry-run"]):
        assert assign_cli.main(cmd + ["--root", tree], out=io.StringIO()) == 0, cmd
    assert files_under(tree) == before
    assert not os.path.exists(os.path.join(tree, "run"))


def test_a_root_that_does_not_exist_is_an_error(tmp_path, capsys):
    missing = str(tmp_path / "no" / "such")
    for cmd in (["status"], ["release", "--all"], ["bind", E1000E]):
        assert assign_cli.main(cmd + ["--root", missing], out=io.StringIO()) == assign_cli.EXIT_REFUSED
        assert f"--root {missing}: no such directory" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "no")


# ---- a run killed between two writes -----------------------------------------------------

class KillAt(SimulatedSysfs):
    """The simulation, SIGKILLed just before its ``n``-th write (``after``: just after it)."""

    def __init__(self, root, n, after=False):
        super().__init__(root)
        self.n, self.after, self.count = n, after, 0

    def write(self, rel, value):
        self.count += 1
        if self.count == self.n and not self.after:
            os.kill(os.getpid(), signal.SIGKILL)
        super().write(rel, value)
        if self.count == self.n and self.after:
            os.kill(os.getpid(), signal.SIGKILL)


def _killed(root, kind, n, after):
    ctx = multiprocessing.get_context("fork")

    def child():
        a = Assigner(Host(sysfs=KillAt(root, n, after)))
        a.assign(ICH9) if kind == "assign" else a.release()
    p = ctx.Process(target=child)
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL, f"{kind} ran to the end: there is no write {n}"


def _check_status_matches_sysfs(root, capsys):
    now = Host(root)
    rows = Assigner(now).reconcile()
    for r in rows:
        d = now.device(r.bdf)
        assert (r.driver, r.driver_override) == (d.driver, d.driver_override)
        assert (r.condition is Condition.ASSIGNED) == ((d.driver, d.driver_override) == ("vfio-pci", "vfio-pci")
                                                       and r.record["status"] == "assigned")
    out = io.StringIO()
    assert assign_cli.main(["status", "--root", root, "--json"], out=out) == 0
    doc = json.loads(out.getvalue())["devices"]
    for b, rec in doc.items():
        d = now.device(b)
        assert rec["now"] == {"driver": d.driver, "driver_override": d.driver_override}
    capsys.readouterr()
    return rows


@pytest.mark.parametrize("kind", ["assign", "release"])
def test_status_after_a_kill_at_every_write_matches_sysfs_and_one_release_restores(tree, capsys, kind):
    original = snapshot(tree)
    n = 9                                   # 3 writes a device, 3 devices
    points = [(k, False) for k in range(1, n + 1)] + [(n, True)]
    for k, after in points:
        if kind == "release":
            Assigner(Host(sysfs=SimulatedSysfs(tree))).assign(ICH9)
        _killed(tree, kind, k, after)
        rows = _check_status_matches_sysfs(tree, capsys)
        half = [r for r in rows if r.condition is Condition.INTERRUPTED]
        assert sorted(r.bdf for r in interrupted(Host(tree))) == sorted(
            r.bdf for r in rows if r.condition is not Condition.ASSIGNED)
        if half:
            # any next command says so, with what release will do (status says it in its own report)
            assign_cli.main(["release", "--all", "--dry-run", "--root", tree], out=io.StringIO())
            err = capsys.readouterr().err
            assert all(f"note: {r.bdf}: record says" in err for r in half)
        Assigner(Host(sysfs=SimulatedSysfs(tree))).release()     # one release puts everything back
        assert snapshot(tree) == original, (k, after)
        assert Assigner(Host(tree)).status()["devices"] == {}


def test_the_kill_hook_stops_at_the_named_write(tree):
    """VFIO_FAULT_KILL_AT_WRITE in the real Sysfs (a captured tree takes the writes as plain files)."""
    out = io.StringIO()
    assign_cli.main(["bind", E1000E, "--root", tree, "--dry-run", "--json"], out=out)
    writes = [w for w in json.loads(out.getvalue())["writes"] if w["kind"] == "write"]
    assert len(writes) == 3
    cmd = [sys.executable, "-m", "vfio.host.assign_cli", "bind", E1000E, "--root", tree]
    r = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "2"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL, r.stderr
    dev = os.path.join(tree, Host(tree).device(E1000E).path)
    assert open(os.path.join(tree, "sys/bus/pci/drivers/e1000e/unbind")).read() == E1000E
    assert open(os.path.join(dev, "driver_override")).read() != "vfio-pci"      # write 2 never happened
    rec = json.load(open(state_path(tree)))["devices"][E1000E]
    assert rec["status"] == "assigning" and rec["driver"] == "e1000e"
    r = subprocess.run(cmd, env={**os.environ, FAULT_ENV: "2+"}, capture_output=True, text=True, timeout=120)
    assert r.returncode == -signal.SIGKILL
    assert open(os.path.join(dev, "driver_override")).read() == "vfio-pci"       # killed just after it


def test_inspect_shows_an_interrupted_assignment(tree):
    from vfio.host import inspect
    ctx = multiprocessing.get_context("fork")
    p = ctx.Process(target=lambda: Assigner(Host(sysfs=KillAt(tree, 2))).assign([E1000E]))
    p.start()
    p.join(60)
    assert p.exitcode == -signal.SIGKILL
    rep = inspect.host_report(Host(tree), ask_kernel=False)["interrupted_assignments"]
    assert rep["error"] is None
    (d,) = rep["devices"]
    assert (d["bdf"], d["original_driver"], d["driver"], d["condition"]) == (E1000E, "e1000e", None, "interrupted")
    assert d["release_will"] == [f"bind {E1000E} to e1000e"]
    out = io.StringIO()
    inspect.render_host(inspect.host_report(Host(tree), ask_kernel=False), out)
    assert f"{E1000E} assignment INTERRUPTED: record says 'assigning' but sysfs says no driver" in out.getvalue()
    Assigner(Host(sysfs=SimulatedSysfs(tree))).release()
    assert inspect.host_report(Host(tree), ask_kernel=False)["interrupted_assignments"]["devices"] == []
