"""vfio-mdev on a fixture tree whose create/remove act like the kernel's
(tests/unit/test_mdev_host.py): mdevctl's verbs, output and JSON, exit
statuses, dry run, definitions, a closed pipe; and vfio-inspect's mdev listing
and the uevent decoding of mdev events."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys

import pytest

from tests.paths import REPO
from tests.unit.test_mdev_host import U1, U2, KernelLikeSysfs, build_tree
from vfio.host import inspect, mdev_cli
from vfio.host.mdev import MdevHost
from vfio.host.watch import event_from_properties


@pytest.fixture
def root(tmp_path, monkeypatch):
    r = build_tree(str(tmp_path / "root"))
    monkeypatch.setattr(mdev_cli, "Sysfs", KernelLikeSysfs)      # the tree reacts to create/remove
    monkeypatch.delenv("VFIO_MDEV_CONFIG_DIR", raising=False)
    return r


def run(root, *argv):
    out, err = io.StringIO(), io.StringIO()
    old = sys.stderr
    sys.stderr = err
    try:
        rc = mdev_cli.main(list(argv) + ["--root", root], out=out)
    except SystemExit as e:             # argparse: usage errors
        rc = e.code
    finally:
        sys.stderr = old
    return rc, out.getvalue(), err.getvalue()


def test_types_text_and_mdevctl_json(root):
    rc, out, err = run(root, "types")
    assert rc == 0 and err == ""
    assert out.startswith("mdpy\n  mdpy-hd\n    Available instances: 4\n    Device API: vfio-pci\n")
    assert "mtty\n  mtty-1\n    Available instances: 24\n    Device API: vfio-pci\n    Name: Single port serial\n" in out
    rc, out, _ = run(root, "types", "-p", "mtty", "--dumpjson")
    assert rc == 0 and json.loads(out) == [{"mtty": [
        {"mtty-1": {"available_instances": 24, "device_api": "vfio-pci", "name": "Single port serial"}},
        {"mtty-2": {"available_instances": 12, "device_api": "vfio-pci", "name": "Dual port serial"}}]}]


def test_start_list_stop(root):
    rc, out, err = run(root, "start", "-p", "mtty", "-t", "mtty-2")
    uuid = out.strip()
    assert rc == 0 and err == "" and MdevHost(root).exists(uuid)       # a generated UUID, printed alone
    rc, out, _ = run(root, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)
    assert rc == 0 and out == ""                                       # a given one is not echoed
    rc, out, _ = run(root, "list")
    assert rc == 0 and sorted(out.splitlines()) == sorted([f"{uuid} mtty mtty-2", f"{U1} mtty mtty-1"])
    rc, out, _ = run(root, "list", "-u", U1, "-v")
    assert rc == 0 and "IOMMU group: " in out and "cdev: /dev/vfio/devices/vfio" in out
    rc, out, _ = run(root, "list", "--dumpjson", "-u", U1)
    assert json.loads(out) == [{"mtty": [{U1: {"mdev_type": "mtty-1", "start": "manual", "attrs": []}}]}]
    rc, out, err = run(root, "stop", "-u", U1)
    assert rc == 0 and err == "" and not MdevHost(root).exists(U1)
    rc, out, _ = run(root, "list", "--json")
    assert [list(e) for p in json.loads(out) for e in p["mtty"]] == [[uuid]]


@pytest.mark.parametrize("argv, words", [
    (["start", "-p", "mtty", "-t", "mtty-9"], "no type 'mtty-9' (its types: mtty-1, mtty-2)"),
    (["start", "-p", "gpu", "-t", "x"], "no mdev parent 'gpu'"),
    (["start", "-p", "mtty"], "-p PARENT and -t TYPE go together"),
    (["start", "-u", U2], f"no mdev definition {U2}"),
    (["stop", "-u", U2], f"no mdev {U2}"),
    (["undefine", "-u", U2], f"no mdev definition {U2}"),
    (["define", "-p", "mtty", "-t", "nope"], "no type 'nope'"),
])
def test_refusals_exit_2_with_one_line_naming_the_thing(root, argv, words):
    rc, out, err = run(root, *argv)
    assert rc == 2 and out == "" and words in err and err.startswith(f"vfio-mdev {argv[0]}: ")
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_uuid_in_use_is_refused(root):
    assert run(root, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    rc, _, err = run(root, "start", "-p", "mdpy", "-t", "mdpy-hd", "-u", U1)
    assert rc == 2 and f"mdev UUID {U1} is in use" in err


@pytest.mark.parametrize("argv", [[], ["frobnicate"], ["stop"], ["start", "-u", "not-a-uuid"],
                                  ["list", "--bogus"]])
def test_bad_arguments_are_usage_errors(root, argv):
    rc, out, err = run(root, *argv)
    assert rc == 2 and "usage: vfio-mdev" in err and "Traceback" not in err


def test_a_missing_root_is_refused(tmp_path):
    rc, _, err = run(str(tmp_path / "nope"), "list")
    assert rc == 2 and "no such directory" in err


def test_dry_run_prints_the_write_and_changes_nothing(root):
    rc, out, err = run(root, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1, "--dry-run")
    assert rc == 0 and err == ""
    assert out.splitlines() == ["# dry run: these are the changes that would be made, in order",
                                f"echo {U1} > /sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create"]
    assert not MdevHost(root).exists(U1)
    run(root, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)
    rc, out, _ = run(root, "stop", "-u", U1, "--dry-run", "--json")
    doc = json.loads(out)
    assert rc == 0 and doc["dry_run"] and doc["writes"] == [
        {"kind": "write", "path": f"/sys/bus/mdev/devices/{U1}/remove", "value": "1"}]
    assert MdevHost(root).exists(U1)


def test_define_start_undefine_round_trip(root, tmp_path):
    conf = str(tmp_path / "conf")
    rc, out, _ = run(root, "define", "-p", "mtty", "-t", "mtty-2", "-u", U1, "--auto", "--config-dir", conf)
    assert rc == 0 and out == ""
    with open(os.path.join(conf, "mtty", U1)) as f:
        assert json.load(f) == {"mdev_type": "mtty-2", "start": "auto", "attrs": []}
    rc, out, _ = run(root, "list", "-d", "--config-dir", conf)
    assert out == f"{U1} mtty mtty-2 auto\n"
    rc, out, _ = run(root, "start", "-u", U1, "--config-dir", conf)
    assert rc == 0 and MdevHost(root).device(U1).type_id == "mtty-2"
    rc, out, _ = run(root, "list", "--config-dir", conf)
    assert out == f"{U1} mtty mtty-2 auto (defined)\n"
    rc, out, _ = run(root, "list", "-d", "--dumpjson", "--config-dir", conf)
    assert json.loads(out) == [{"mtty": [{U1: {"mdev_type": "mtty-2", "start": "auto", "attrs": []}}]}]
    # defining it again is refused; undefining leaves the running mdev alone
    assert run(root, "define", "-u", U1, "--config-dir", conf)[0] == 2
    rc, _, _ = run(root, "undefine", "-u", U1, "--config-dir", conf)
    assert rc == 0 and not os.path.exists(os.path.join(conf, "mtty", U1)) and MdevHost(root).exists(U1)


def test_define_a_running_mdev_and_the_env_var_config_dir(root, tmp_path, monkeypatch):
    conf = str(tmp_path / "envconf")
    monkeypatch.setenv("VFIO_MDEV_CONFIG_DIR", conf)
    run(root, "start", "-p", "mdpy", "-t", "mdpy-vga", "-u", U2)
    rc, _, err = run(root, "define", "-u", U2, "-t", "mdpy-hd")
    assert rc == 2 and "running as mdpy-vga on mdpy" in err
    assert run(root, "define", "-u", U2)[0] == 0
    with open(os.path.join(conf, "mdpy", U2)) as f:
        assert json.load(f)["mdev_type"] == "mdpy-vga"


def test_definitions_default_under_the_root(root):
    assert run(root, "define", "-p", "mtty", "-t", "mtty-1", "-u", U1)[0] == 0
    assert os.path.exists(os.path.join(root, "etc/vfio-toolkit/mdev.d/mtty", U1))


def test_a_kernel_refusal_exits_1_with_its_errno_words(root, monkeypatch):
    class NotRoot(KernelLikeSysfs):
        def write(self, rel, value):
            raise PermissionError(13, "Permission denied")
    from vfio.errors import wrap_oserror

    def write(self, rel, value):
        raise wrap_oserror(PermissionError(13, "Permission denied"), f"writing {value!r} to {self.shown(rel)}")
    monkeypatch.setattr(NotRoot, "write", write)
    monkeypatch.setattr(mdev_cli, "Sysfs", NotRoot)
    rc, _, err = run(root, "start", "-p", "mtty", "-t", "mtty-1", "-u", U1)
    assert rc == 1 and "Permission denied" in err and "needs root" in err and "/create" in err


def test_closed_pipe_ends_quietly_killed_by_sigpipe(tmp_path):
    root = build_tree(str(tmp_path / "root"))
    r, w = os.pipe()
    os.close(r)
    try:
        p = subprocess.run([sys.executable, "-m", "vfio.host.mdev_cli", "types", "--root", root], cwd=REPO,
                           stdout=w, stderr=subprocess.PIPE, timeout=120)
    finally:
        os.close(w)
    assert p.returncode == -signal.SIGPIPE and p.stderr == b""


# ---- vfio-inspect and the watcher ----------------------------------------------------------

def test_inspect_lists_parents_and_mdevs(root):
    MdevHost(sysfs=KernelLikeSysfs(root)).create("mtty", "mtty-2", U1)
    out = io.StringIO()
    assert inspect.main(["--root", root], out=out) == 0
    text = out.getvalue()
    assert "Mediated device parents (mdev_supported_types):" in text
    assert '    mtty-2 "Dual port serial" [vfio-pci]: 11 more available, 1 in use' in text
    assert f"IOMMU group 6: viable" in text
    assert f"  {U1} mdev mtty-2 of mtty (vfio-pci), driver: mtty, cdev /dev/vfio/devices/vfio1" in text
    out = io.StringIO()
    assert inspect.main(["--root", root, "--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["mdevs"] == [{"uuid": U1, "parent": "mtty", "type": "mtty-2", "device_api": "vfio-pci",
                             "iommu_group": "6", "driver": "mtty", "cdev": "vfio1"}]
    assert [g for g in doc["groups"] if g["group"] == "6"][0]["other_devices"] == [U1]
    mtty = [p for p in doc["mdev_parents"] if p["name"] == "mtty"][0]
    assert [(t["type"], t["available_instances"], t["devices"]) for t in mtty["types"]] == [
        ("mtty-1", 22, []), ("mtty-2", 11, [U1])]


def test_inspect_one_mdev_by_uuid(root):
    MdevHost(sysfs=KernelLikeSysfs(root)).create("mtty", "mtty-1", U1)
    out = io.StringIO()
    assert inspect.main(["--root", root, "--json", U1.upper()], out=out) == 0
    doc = json.loads(out.getvalue())
    assert (doc["kind"], doc["uuid"], doc["type"], doc["vfio"]) == ("mdev", U1, "mtty-1", None)
    assert "captured tree" in doc["vfio_error"]
    err = io.StringIO()
    old, sys.stderr = sys.stderr, err
    try:
        assert inspect.main(["--root", root, U2], out=io.StringIO()) == 2
    finally:
        sys.stderr = old
    assert f"no mdev {U2}" in err.getvalue()


def test_mdev_uevents_are_decoded():
    ev = event_from_properties({"ACTION": "add", "DEVPATH": f"/devices/virtual/mtty/mtty/{U1}",
                                "SUBSYSTEM": "mdev", "SEQNUM": "812"}, now=0.0)
    assert (ev.action, ev.bdf, ev.subsystem, ev.seqnum) == ("add", U1, "mdev", 812)
    assert ev.to_dict()["subsystem"] == "mdev" and f"add     {U1} (mdev)" in str(ev)
    pci = event_from_properties({"ACTION": "bind", "PCI_SLOT_NAME": "0000:00:04.0", "SUBSYSTEM": "pci"}, now=0.0)
    assert pci.subsystem == "pci" and "(pci)" not in str(pci)
