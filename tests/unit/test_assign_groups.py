"""vfio-assign and IOMMU groups, on writable copies of fixtures/sysfs/q35-guest
with vfio.host.simulate standing in for the driver core:

* an IOMMU that gives a device its group only when a driver probes it
  (virtio-iommu described by ACPI VIOT);
* release as symmetric as binding (whole group, or refused naming the companions);
* the QEMU and libvirt snippets for a multifunction device, and none in no-IOMMU mode;
* a failed run reports what really happened to each device (no false
  "ROLLBACK INCOMPLETE").
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil

import pytest

from vfio.errors import VfioError
from vfio.host import assign_cli
from vfio.host.assign import (AssignmentFailed, AssignmentRefused, Assigner, guest_layout, layout_note,
                              libvirt_hostdevs, qemu_args)
from vfio.host.simulate import SimulatedSysfs
from vfio.host.sysfs import Host

E1000E = "0000:01:00.0"
ICH9 = ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]


def snapshot(root: str) -> dict:
    return {d.bdf: (d.driver, d.driver_override, d.iommu_group) for d in Host(root).devices()}


def recorded(root: str) -> dict:
    p = os.path.join(root, "run/vfio-assign/state.json")
    return json.load(open(p))["devices"] if os.path.exists(p) else {}


# ---- an IOMMU that attaches devices on probe (virtio-iommu) -----------------------------

def virtio_iommu(tree: str) -> str:
    """The guest tree as a virtio-iommu guest shows it: the IOMMU registered in
    /sys/class/iommu, groups for the probed devices, none yet for e1000e, which
    no driver has probed."""
    SimulatedSysfs(tree).write("sys/bus/pci/drivers/e1000e/unbind", E1000E)
    os.unlink(os.path.join(tree, Host(tree).device(E1000E).path, "iommu_group"))
    shutil.rmtree(os.path.join(tree, "sys/kernel/iommu_groups/9"))
    os.makedirs(os.path.join(tree, "sys/class/iommu/virtio0"))
    return tree


def test_no_group_but_an_iommu_is_not_called_no_iommu(tree):
    virtio_iommu(tree)
    h = Host(tree)
    assert h.device(E1000E).iommu_group is None and h.has_iommu
    before = snapshot(tree)
    sim = SimulatedSysfs(tree, probe_groups={E1000E: "9"})
    plan = Assigner(Host(sysfs=sim)).assign([E1000E], owner=(107, 108))
    assert [d.bdf for d in plan.devices] == [E1000E]
    d = Host(tree).device(E1000E)
    assert (d.driver, d.driver_override, d.iommu_group) == ("vfio-pci", "vfio-pci", "9")
    assert sim.owners == {"/dev/vfio/9": (107, 108)}           # the group learnt on probe got its owner
    assert recorded(tree)[E1000E]["iommu_group"] == "9" and recorded(tree)[E1000E]["driver"] is None
    Assigner(Host(sysfs=sim)).release()
    after = snapshot(tree)
    assert after[E1000E] == (None, None, "9")                   # back on no driver; the group stays
    assert {k: v for k, v in after.items() if k != E1000E} == {k: v for k, v in before.items() if k != E1000E}


def test_the_cli_binds_a_device_whose_group_comes_with_the_probe(tree):
    virtio_iommu(tree)
    out = io.StringIO()
    assert assign_cli.main(["bind", E1000E, "--root", tree, "--dry-run"], out=out) == 0
    assert f"echo {E1000E} > /sys/bus/pci/drivers_probe" in out.getvalue()


def test_a_group_learnt_on_probe_with_companions_rolls_back(tree):
    virtio_iommu(tree)
    before = snapshot(tree)
    sim = SimulatedSysfs(tree, probe_groups={E1000E: "8"})      # joins the ICH9 group
    with pytest.raises(AssignmentFailed) as e:
        Assigner(Host(sysfs=sim)).assign([E1000E])
    msg = str(e.value)
    assert "joined IOMMU group 8 only when probed" in msg and "0000:00:1f.0 (lpc_ich)" in msg
    assert not e.value.incomplete and "rolled back" in msg
    after = snapshot(tree)
    assert after[E1000E] == (None, None, "8")                   # as before, except the group it now knows
    assert {k: v for k, v in after.items() if k != E1000E} == {k: v for k, v in before.items() if k != E1000E}
    assert recorded(tree) == {}


def test_without_any_iommu_it_is_still_refused(tree):
    virtio_iommu(tree)
    shutil.rmtree(os.path.join(tree, "sys/class/iommu"))
    shutil.rmtree(os.path.join(tree, "sys/kernel/iommu_groups"))
    with pytest.raises(AssignmentRefused, match="no IOMMU enabled"):
        Assigner(Host(sysfs=SimulatedSysfs(tree))).plan_assign([E1000E])


def test_noiommu_groups_are_not_an_iommu(tree):
    virtio_iommu(tree)
    shutil.rmtree(os.path.join(tree, "sys/class/iommu"))
    groups = os.path.join(tree, "sys/kernel/iommu_groups")
    for g in os.listdir(groups):
        with open(os.path.join(groups, g, "name"), "w") as f:
            f.write("vfio-noiommu\n")
    assert not Host(tree).has_iommu
    with pytest.raises(AssignmentRefused, match="no IOMMU enabled"):
        Assigner(Host(sysfs=SimulatedSysfs(tree))).plan_assign([E1000E])


# ---- release is symmetric ----------------------------------------------------------

def test_releasing_one_member_is_refused_naming_the_companions(tree):
    before = snapshot(tree)
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    a.assign(["00:1f.2"], whole_group=True)
    assigned = snapshot(tree)
    with pytest.raises(AssignmentRefused) as e:
        a.release(["00:1f.2"])
    assert "0000:00:1f.0, 0000:00:1f.3" in str(e.value) and "--whole-group" in str(e.value)
    assert snapshot(tree) == assigned and sorted(recorded(tree)) == ICH9
    a.release(["00:1f.2"], whole_group=True)
    assert snapshot(tree) == before and recorded(tree) == {}


def test_split_group_releases_only_the_named_member(tree):
    a = Assigner(Host(sysfs=SimulatedSysfs(tree)))
    a.assign(["00:1f.2"], whole_group=True)
    a.release(["00:1f.2"], split_group=True)
    h = Host(tree)
    assert [h.device(b).driver for b in ICH9] == ["vfio-pci", "ahci", "vfio-pci"]
    assert sorted(recorded(tree)) == ["0000:00:1f.0", "0000:00:1f.3"]


def test_cli_release_group_flags(tree):
    Assigner(Host(sysfs=SimulatedSysfs(tree))).assign(["00:1f.2"], whole_group=True)
    out = io.StringIO()
    assert assign_cli.main(["release", "00:1f.2", "--root", tree, "--dry-run"], out=out) == assign_cli.EXIT_REFUSED
    assert assign_cli.main(["release", "00:1f.2", "--whole-group", "--root", tree, "--dry-run"], out=out) == 0
    assert "echo 0000:00:1f.0 > /sys/bus/pci/drivers/vfio-pci/unbind" in out.getvalue()
    with pytest.raises(SystemExit):
        assign_cli.main(["release", "00:1f.2", "--whole-group", "--split-group", "--root", tree])


# ---- QEMU and libvirt snippets ------------------------------------------------------

def test_a_multifunction_group_is_one_guest_device():
    args = qemu_args(ICH9 + [E1000E])
    assert args == ["-device", "vfio-pci,host=0000:00:1f.0,addr=0x10.0,multifunction=on",
                    "-device", "vfio-pci,host=0000:00:1f.2,addr=0x10.2",
                    "-device", "vfio-pci,host=0000:00:1f.3,addr=0x10.3",
                    "-device", f"vfio-pci,host={E1000E}"]
    assert "guest slot 0x10" in layout_note(ICH9) and layout_note([E1000E]) == ""
    xml = libvirt_hostdevs(ICH9)
    assert "<address type='pci' domain='0x0000' bus='0x00' slot='0x10' function='0x0' multifunction='on'/>" in xml[0]
    assert "slot='0x10' function='0x2'/>" in xml[1]


def test_functions_without_function_0_are_renumbered_and_slots_advance():
    lay = guest_layout(["0000:03:00.1", "0000:03:00.2", "0000:04:00.0", "0000:04:00.1"], first_slot=0x1d)
    assert [(p.host, p.slot, p.function, p.multifunction) for p in lay] == [
        ("0000:03:00.1", 0x1d, 0, True), ("0000:03:00.2", 0x1d, 1, False),
        ("0000:04:00.0", 0x1e, 0, True), ("0000:04:00.1", 0x1e, 1, False)]


def test_cli_prints_the_multifunction_snippet_and_json(tree):
    out = io.StringIO()
    assert assign_cli.main(["bind", "00:1f.2", "--whole-group", "--root", tree, "--dry-run", "--json",
                            "--guest-slot", "0x12"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["qemu_args"][1] == "vfio-pci,host=0000:00:1f.0,addr=0x12.0,multifunction=on"
    assert "multifunction='on'" in doc["libvirt_hostdev"][0] and "0x12" in doc["qemu_note"]
    assert doc["not_for_qemu"] == []


def test_no_qemu_snippet_for_a_noiommu_group(tree):
    with open(os.path.join(tree, "sys/kernel/iommu_groups/3/name"), "w") as f:
        f.write("vfio-noiommu\n")
    out = io.StringIO()
    assert assign_cli.main(["bind", "00:03.0", "--root", tree], out=out) == 0
    text = out.getvalue()
    assert "vfio-pci,host=" not in text and "<hostdev" not in text
    assert "0000:00:03.0: no QEMU or libvirt snippet: IOMMU group 3 is a no-IOMMU group" in text
    out = io.StringIO()
    assert assign_cli.main(["bind", "00:03.0", "--root", tree, "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["qemu_args"] == [] and doc["not_for_qemu"][0]["bdf"] == "0000:00:03.0"


def test_help_names_the_snippets(capsys):
    with pytest.raises(SystemExit):
        assign_cli.main(["--help"])
    text = capsys.readouterr().out
    assert "QEMU arguments" in text and "libvirt <hostdev>" in text and "qemu_args" in text
    with pytest.raises(SystemExit):
        assign_cli.main(["bind", "--help"])
    assert "qemu_args" in capsys.readouterr().out


# ---- what a failed run reports --------------------------------------------------------

class ReadOnlyOverride(SimulatedSysfs):
    """driver_override cannot be written (EACCES), as on a locked-down host."""

    def write(self, rel, value):
        if rel.endswith("/driver_override"):
            self.writes.append((self.shown(rel), value))
            raise VfioError(errno.EACCES, f"writing {value.strip()!r} to /{rel}")
        super().write(rel, value)


def test_a_read_only_override_is_no_false_rollback_incomplete(tree):
    before = snapshot(tree)
    with pytest.raises(AssignmentFailed) as e:
        Assigner(Host(sysfs=ReadOnlyOverride(tree))).assign([E1000E])
    assert not e.value.incomplete and e.value.rollback_errors == []
    assert "ROLLBACK INCOMPLETE" not in str(e.value)
    assert f"{E1000E}: on e1000e, as before" in str(e.value)
    assert snapshot(tree) == before and recorded(tree) == {}


class NoRebind(SimulatedSysfs):
    def write(self, rel, value):
        if rel.endswith("e1000e/bind") or (rel.endswith("/driver_override") and value.strip() == "vfio-pci"):
            raise VfioError(errno.ENODEV, f"writing {value!r} to /{rel}")
        super().write(rel, value)


def test_an_incomplete_rollback_names_where_the_device_is_and_keeps_its_record(tree):
    with pytest.raises(AssignmentFailed) as e:
        Assigner(Host(sysfs=NoRebind(tree))).assign([E1000E])
    assert e.value.incomplete
    assert f"ROLLBACK INCOMPLETE: {E1000E}: now on no driver, was on e1000e" in str(e.value)
    rec = recorded(tree)[E1000E]            # the record release needs is kept
    assert rec["driver"] == "e1000e" and rec["status"] == "assigning"


def test_inspect_calls_a_device_without_a_group_yet_not_no_iommu(tree):
    """vfio-inspect agrees with vfio-assign: under an IOMMU that attaches devices on
    probe, a device no driver has probed has no group *yet*; the host has an IOMMU."""
    from vfio.host import inspect
    virtio_iommu(tree)
    rep = inspect.host_report(Host(tree), ask_kernel=False)
    assert rep["iommu"] is True
    dev = next(d for d in rep["devices"] if d["bdf"] == E1000E)
    assert dev["iommu_group"] is None
    assert "when a driver probes it" in dev["why_not_viable"] and "not enabled" not in dev["why_not_viable"]
