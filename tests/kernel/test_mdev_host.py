"""Mediated devices on the real kernel with the host tools: the model of mtty
and mdpy, create/list/remove through the Python API and vfio-mdev, the
refusals (checked by the toolkit first, and the kernel's own answers, which
the unit tests' fixture imitates), vfio-inspect's listing, and the uevents."""

from __future__ import annotations

import errno
import io
import json
import os
import subprocess
import sys

import pytest

import vfio
from vfio.errors import VfioError
from vfio.host import inspect
from vfio.host.mdev import MDEV_DEVICES, DeviceApi, MdevError, MdevHost, MdevInUse, create_mdev, remove_mdev
from vfio.host.sysfs import Host, Sysfs

pytestmark = [pytest.mark.kernel, pytest.mark.mdev]

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UUID = "6e3fd8a4-4a4c-4b7e-9d50-0b5c2c1e7a01"


def cli(*argv, env=None, process=False):
    """vfio-mdev ARGV: in this process (a guest's Python start-up is seconds under TCG), or
    with ``process`` as a program of its own."""
    if process:
        return subprocess.run([sys.executable, "-m", "vfio.host.mdev_cli", *argv], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=env)
    from vfio.host import mdev_cli
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_err = dict(os.environ), sys.stderr
    try:
        if env is not None:
            os.environ.clear()
            os.environ.update(env)
        sys.stderr = err
        rc = mdev_cli.main(list(argv), out=out)
    finally:
        sys.stderr = saved_err
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(argv, rc, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def no_mdev_left():
    before = set(MdevHost().uuids())
    yield
    for u in set(MdevHost().uuids()) - before:
        remove_mdev(u)


def test_the_kernels_parents_and_types():
    h = MdevHost()
    assert {"mtty", "mdpy"} <= set(h.parent_names())
    mtty = {t.type_id: t for t in h.parent("mtty").types}
    assert (mtty["mtty-1"].name, mtty["mtty-2"].name) == ("Single port serial", "Dual port serial")
    assert mtty["mtty-1"].device_api is DeviceApi.PCI
    free = mtty["mtty-1"].available_instances
    assert free == 2 * mtty["mtty-2"].available_instances and free > 0
    mdpy = {t.type_id: t for t in h.parent("mdpy").types}
    assert set(mdpy) == {"mdpy-hd", "mdpy-vga", "mdpy-xga"}
    assert mdpy["mdpy-vga"].description == "virtual display, 640x480 framebuffer"


def test_create_and_remove_through_the_api():
    h = MdevHost()
    free = h.parent("mtty").type("mtty-1").available_instances
    assert create_mdev("mtty", "mtty-2", UUID.upper()) == UUID
    d = h.device(UUID)
    assert (d.parent, d.type_id, d.driver, d.device_api) == ("mtty", "mtty-2", "mtty", DeviceApi.PCI)
    assert d.iommu_group is not None and os.path.exists(f"/dev/vfio/{d.iommu_group}")
    assert d.cdev is not None and os.path.exists(f"/dev/vfio/devices/{d.cdev}")
    assert h.parent("mtty").type("mtty-1").available_instances == free - 2     # mtty's ports are shared
    assert UUID in h.parent("mtty").type("mtty-2").devices
    g = Host().group(d.iommu_group)
    assert g.others == (UUID,) and not Host().is_noiommu_group(d.iommu_group)
    remove_mdev(UUID)
    assert not h.exists(UUID) and h.parent("mtty").type("mtty-1").available_instances == free


def test_refusals_and_the_kernels_own_answers():
    h = MdevHost()
    create_mdev("mtty", "mtty-1", UUID)
    with pytest.raises(MdevError) as e:
        create_mdev("mdpy", "mdpy-vga", UUID)
    assert e.value.errno == errno.EEXIST and UUID in str(e.value)
    with pytest.raises(MdevError) as e:
        create_mdev("mtty", "mtty-7")
    assert "no type 'mtty-7'" in str(e.value)
    # what the toolkit checks first, the kernel says too (the unit tests' fixture imitates it)
    create = f"{h.parent('mdpy').type('mdpy-vga').path}/create"
    with pytest.raises(VfioError) as e:
        Sysfs().write(create, UUID)
    assert e.value.errno == errno.EEXIST
    with pytest.raises(VfioError) as e:
        Sysfs().write(create, "not-a-uuid-at-all-but-36-chars-long!")
    assert e.value.errno == errno.EINVAL
    # fill mtty up: the toolkit refuses the next one (EUSERS), and mtty's own probe says ENOSPC
    n = h.parent("mtty").type("mtty-2").available_instances
    for _ in range(n):
        create_mdev("mtty", "mtty-2")
    assert h.parent("mtty").type("mtty-2").available_instances == 0
    with pytest.raises(MdevError) as e:
        create_mdev("mtty", "mtty-2")
    assert e.value.errno == errno.EUSERS and "no instances left" in str(e.value)
    with pytest.raises(VfioError) as e:
        Sysfs().write(f"{h.parent('mtty').type('mtty-2').path}/create", "6e3fd8a4-4a4c-4b7e-9d50-0b5c2c1e7a02")
    assert e.value.errno == errno.ENOSPC


def test_remove_while_open_elsewhere_is_refused_naming_the_process():
    create_mdev("mtty", "mtty-1", UUID)
    d = MdevHost().device(UUID)
    # another process holds the cdev open (not even bound): the kernel would block the removal
    holder = subprocess.Popen([sys.executable, "-c", f"import os,sys; fd=os.open('/dev/vfio/devices/{d.cdev}', "
                               "os.O_RDWR); print('open', flush=True); sys.stdin.read()"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        with pytest.raises(MdevInUse) as e:
            remove_mdev(UUID)
        assert e.value.errno == errno.EBUSY and f"pid {holder.pid}" in str(e.value)
        r = cli("stop", "-u", UUID)
        assert r.returncode == 2 and "is open" in r.stderr and "Traceback" not in r.stderr
        assert MdevHost().exists(UUID)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    remove_mdev(UUID)
    assert not MdevHost().exists(UUID)


def test_vfio_mdev_cli_start_list_define_stop(tmp_path):
    conf = str(tmp_path / "mdev.d")
    env = dict(os.environ, VFIO_MDEV_CONFIG_DIR=conf)
    r = cli("types", "--dumpjson", process=True)
    types = {k: v for p in json.loads(r.stdout) if "mtty" in p for e in p["mtty"] for k, v in e.items()}
    assert r.returncode == 0 and types["mtty-2"]["name"] == "Dual port serial"
    r = cli("start", "-p", "mtty", "-t", "mtty-2", process=True)
    uuid = r.stdout.strip()
    assert r.returncode == 0 and MdevHost().device(uuid).type_id == "mtty-2"
    r = cli("list")
    assert f"{uuid} mtty mtty-2\n" in r.stdout
    r = cli("define", "-u", uuid, env=env)
    assert r.returncode == 0 and os.path.exists(os.path.join(conf, "mtty", uuid))
    r = cli("stop", "-u", uuid)
    assert r.returncode == 0 and not MdevHost().exists(uuid)
    r = cli("start", "-u", uuid, env=env)                  # again, from its definition
    assert r.returncode == 0 and MdevHost().device(uuid).type_id == "mtty-2"
    r = cli("list", "-d", env=env)
    assert r.stdout == f"{uuid} mtty mtty-2 manual (active)\n"
    r = cli("stop", "-u", uuid, "--dry-run")
    assert r.returncode == 0 and f"echo 1 > /sys/bus/mdev/devices/{uuid}/remove" in r.stdout
    assert MdevHost().exists(uuid)
    r = cli("start", "-p", "mtty", "-t", "nope")
    assert r.returncode == 2 and "no type 'nope'" in r.stderr
    assert cli("undefine", "-u", uuid, env=env).returncode == 0
    assert cli("stop", "-u", uuid).returncode == 0 and not MdevHost().exists(uuid)


def test_vfio_inspect_lists_and_opens_mdevs():
    create_mdev("mtty", "mtty-2", UUID)
    g = MdevHost().device(UUID).iommu_group
    out = io.StringIO()
    assert inspect.main(["--json"], out=out) == 0
    doc = json.loads(out.getvalue())
    assert [m for m in doc["mdevs"] if m["uuid"] == UUID][0]["iommu_group"] == g
    grp = [x for x in doc["groups"] if x["group"] == g][0]
    assert grp["other_devices"] == [UUID] and grp["viable"] and grp["viability_source"] == "kernel"
    out = io.StringIO()
    assert inspect.main([], out=out) == 0
    assert f"  {UUID} mdev mtty-2 of mtty (vfio-pci), driver: mtty" in out.getvalue()
    out = io.StringIO()
    assert inspect.main([UUID, "--json"], out=out) == 0
    v = json.loads(out.getvalue())["vfio"]
    assert "pci" in v["flag_names"] and [r["size"] for r in v["regions"][:3]] == [8, 8, 0]
    assert v["regions"][7]["name"] == "CONFIG" and v["regions"][7]["size"] == 0xFF
    # while it is open, vfio-inspect says so in place (exit 3) rather than failing
    with vfio.open_mdev_device(UUID):
        out = io.StringIO()
        assert inspect.main([UUID], out=out) == 3
        assert "VFIO: cannot open:" in out.getvalue() and "busy" in out.getvalue().lower()


def test_watch_sees_mdev_add_and_remove():
    from vfio.host.watch import Watcher, events
    with Watcher() as w:
        create_mdev("mtty", "mtty-1", UUID)
        remove_mdev(UUID)
        got = [(e.action, e.bdf, e.subsystem) for e in events(timeout=5, watcher=w) if e.bdf == UUID]
    assert ("add", UUID, "mdev") in got and ("remove", UUID, "mdev") in got
    assert got.index(("add", UUID, "mdev")) < got.index(("remove", UUID, "mdev"))


def test_not_root_is_a_clear_error_not_a_traceback():
    create_mdev("mtty", "mtty-1", UUID)
    # everything imported first: the guest's Python lives where user nobody cannot read
    code = ("import os, sys, json, uuid, select, signal, locale, gettext\n"
            "from vfio.host.mdev_cli import main\n"
            "os.setgroups([]); os.setgid(65534); os.setuid(65534)\n"
            "sys.exit(main())\n")
    for argv, words in ((["start", "-p", "mtty", "-t", "mtty-1"], "creating an mdev needs root"),
                        (["stop", "-u", UUID], "removing an mdev needs root")):
        p = subprocess.run([sys.executable, "-c", code, *argv], cwd=REPO, capture_output=True, text=True,
                           timeout=120)
        assert p.returncode == 1 and words in p.stderr and "Permission denied" in p.stderr, p.stderr
        assert "Traceback" not in p.stderr and p.stdout == ""
    assert MdevHost().exists(UUID) and MdevHost().uuids().count(UUID) == 1
