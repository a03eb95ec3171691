"""vfio-assign's whole-state commands for device-tree devices: ``release --all``,
the interrupted-run note and ``status`` cover the platform records (their own
state file, ROOT/run/vfio-assign/platform-state.json) as they cover PCI ones.

The tree and :class:`ReactingSysfs` (driver writes applied like the kernel)
are test_platform_host's; the guest side is tests/kernel/test_platform2_assign.py.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from vfio.host import assign_cli
from vfio.host.assign import (DEFAULT_STATE, PLATFORM_STATE, Assigner, AssignmentRefused, Condition,
                              PlatformAssigner, interrupted)
from vfio.host.sysfs import Host
from vfio.platform import find_platform_device
from tests.unit.test_platform_host import RTC, SUB, VM, ReactingSysfs, _link, tree  # noqa: F401  (tree: the fixture)

GONE_BDF = "0000:00:04.0"           # a PCI record whose device is no longer there


def _bind(root, names):
    sysfs = ReactingSysfs(root)
    PlatformAssigner(Host(sysfs=sysfs)).assign(names)
    return sysfs


def _pci_record(root):
    p = os.path.join(root, DEFAULT_STATE)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "w") as f:
        json.dump({"schema": "vfio-assign-state/1", "devices": {GONE_BDF: {
            "driver": "nvme", "driver_override": None, "ids": "1b36:0010", "iommu_group": "4",
            "status": "assigned", "since": "2026-01-01T00:00:00+00:00", "uid": 0}}}, f)


def _drivers(root):
    return {n: (find_platform_device(n, root).driver, find_platform_device(n, root).driver_override)
            for n in (VM, RTC)}


def test_release_all_gives_back_platform_and_pci_records(tree, monkeypatch):
    _bind(tree, [VM, RTC])
    _pci_record(tree)
    assert _drivers(tree) == {VM: ("vfio-platform", "vfio-platform"), RTC: ("vfio-amba", "vfio-amba")}
    # the command line writes through Sysfs: make its writes act like the kernel's
    monkeypatch.setattr(assign_cli, "Sysfs", ReactingSysfs)
    out = io.StringIO()
    assert assign_cli.main(["release", "--all", "--root", tree], out=out) == 0
    text = out.getvalue()
    assert f"{GONE_BDF}: gone from sysfs" in text
    assert f"{VM} (/virtio_mmio@a000000) released: now on no driver" in text
    assert f"{RTC} (/pl031@9010000) released: now on no driver" in text
    assert "nothing recorded" not in text
    assert _drivers(tree) == {VM: (None, None), RTC: (None, None)}
    for rel in (DEFAULT_STATE, PLATFORM_STATE):
        assert json.load(open(os.path.join(tree, rel)))["devices"] == {}
    # nothing left: said once
    out = io.StringIO()
    assert assign_cli.main(["release", "--all", "--root", tree], out=out) == 0
    assert out.getvalue() == "nothing recorded as assigned\n"


def test_release_all_dry_run_and_json_show_the_platform_part(tree):
    _bind(tree, [VM])
    before = open(os.path.join(tree, PLATFORM_STATE)).read()
    out = io.StringIO()
    assert assign_cli.main(["release", "--all", "--dry-run", "--root", tree], out=out) == 0
    assert f"/sys/bus/platform/devices/{VM}/driver_override" in out.getvalue()
    assert "(nothing to do)" not in out.getvalue()
    out = io.StringIO()
    assert assign_cli.main(["release", "--all", "--dry-run", "--json", "--root", tree], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["devices"] == [] and [d["name"] for d in doc["platform"]["devices"]] == [VM]
    assert [w["path"] for w in doc["platform"]["writes"]] == [
        "/sys/bus/platform/drivers/vfio-platform/unbind", f"/sys/bus/platform/devices/{VM}/driver_override"]
    assert open(os.path.join(tree, PLATFORM_STATE)).read() == before       # a dry run changes nothing
    assert find_platform_device(VM, tree).driver == "vfio-platform"
    assert not os.path.exists(os.path.join(tree, DEFAULT_STATE))


def test_release_all_creates_no_platform_state_file(tree):
    assert assign_cli.main(["release", "--all", "--root", tree], out=io.StringIO()) == 0
    assert not os.path.exists(os.path.join(tree, PLATFORM_STATE))
    assert not os.path.exists(os.path.join(tree, PLATFORM_STATE + ".lock"))


def test_the_interrupted_note_names_platform_records(tree, capsys):
    sysfs = _bind(tree, [VM, RTC])
    sysfs.write("sys/bus/platform/drivers/vfio-platform/unbind", VM)    # a run stopped half-way
    note = (f"vfio-assign: note: {VM}: record says 'assigned' but sysfs says no driver "
            f"(driver_override vfio-platform); originally on no driver")
    # from a PCI command, a platform one, and release --all alike
    for argv in (["bind", "0000:00:01.0", "--dry-run"], ["bind", RTC, "--dry-run"],
                 ["release", "--all", "--dry-run"]):
        assign_cli.main([*argv, "--root", tree], out=io.StringIO())
        err = capsys.readouterr().err
        assert note in err and f"`vfio-assign release {VM}` will: set driver_override of {VM} to (none)" in err
        assert err.count("note:") == 1          # the PL031 is cleanly assigned: no note
    rows = interrupted(Host(tree), platform=True)
    assert [(r.bdf, r.condition) for r in rows] == [(VM, Condition.INTERRUPTED)]
    assert interrupted(Host(tree)) == []                                  # the PCI file: nothing


def test_status_shows_platform_records_in_the_pci_shape(tree):
    _bind(tree, [RTC])
    group = find_platform_device(RTC, tree).iommu_group
    out = io.StringIO()
    assert assign_cli.main(["status", "--root", tree], out=out) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"{RTC} (amba, /pl031@9010000) assigned since ")
    assert lines[0].endswith(f", IOMMU group {group}, original driver none")
    assert lines[1] == ("    device-tree node /pl031@9010000 [arm,pl031, arm,primecell]: region i is reg[i] "
                        "(reg[0] 0x9010000), IRQ i is interrupts[i]")


def test_one_carrying_out_for_both_kinds(tree):
    """The platform assigner keeps its records through the PCI code (one state-file
    base, one rollback loop): only the hooks that name a device differ."""
    for m in ("assign", "release", "status", "reconcile", "execute"):
        assert getattr(PlatformAssigner, m) is getattr(Assigner, m), m
    _bind(tree, [RTC])
    (row,) = PlatformAssigner(Host(tree)).reconcile()
    assert row.condition is Condition.ASSIGNED and row.note == "on vfio-amba; original driver none"


def test_a_platform_device_in_an_iommu_group_goes_with_its_companions(tree):
    """A group an IOMMU made (``iommus`` in the node) is held to the PCI rule: every
    other member on a VFIO driver or none, or named too."""
    for name in (VM, SUB):
        _link(tree, f"sys/kernel/iommu_groups/5/devices/{name}", f"sys/devices/platform/{name}")
        _link(tree, f"sys/devices/platform/{name}/iommu_group", "sys/kernel/iommu_groups/5")
    _link(tree, f"sys/devices/platform/{SUB}/driver", "sys/bus/platform/drivers/gpio-keys")
    pa = PlatformAssigner(Host(tree))
    with pytest.raises(AssignmentRefused, match=f"IOMMU group 5 of {VM} also holds {SUB} .platform. is bound "
                                                "to gpio-keys"):
        pa.plan_assign([VM])
    assert sorted(n.name for n in pa.plan_assign([VM, SUB]).devices) == sorted([VM, SUB])


def test_vfio_inspect_reports_interrupted_platform_assignments(tree):
    from vfio.host import inspect
    sysfs = _bind(tree, [VM, RTC])
    sysfs.write("sys/bus/platform/drivers/vfio-platform/unbind", VM)    # a run stopped half-way
    rep = inspect.host_report(Host(tree), ask_kernel=False)
    plat = rep["interrupted_platform_assignments"]
    assert plat["state_file"].endswith("run/vfio-assign/platform-state.json") and plat["error"] is None
    assert [(d["device"], d["bdf"], d["condition"]) for d in plat["devices"]] == [(VM, None, "interrupted")]
    assert rep["interrupted_assignments"]["devices"] == []               # the PCI file: nothing
    out = io.StringIO()
    inspect.render_host(rep, out)
    assert f"{VM} assignment INTERRUPTED" in out.getvalue()
    assert f"`vfio-assign release {VM}` will: set driver_override of {VM} to (none)" in out.getvalue()
