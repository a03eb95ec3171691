"""The mdev host model on fixture trees: parents, types, devices, create/remove
rules, definitions.

The tree is built here in the layout Linux 6.12 gives it (checked in the guest:
``/sys/class/mdev_bus/mtty -> ../../devices/virtual/mtty/mtty``, the mdev at
``.../mtty/mtty/UUID`` with ``mdev_type``, ``iommu_group``, ``driver`` links,
``remove`` and ``vfio-dev/vfioN``; its group named ``vfio-noiommu`` with the
node ``/dev/vfio/N``), and :class:`KernelLikeSysfs` answers ``create`` and
``remove`` writes the way drivers/vfio/mdev/mdev_sysfs.c and mtty do: EEXIST
for a UUID in use, ENOSPC past mtty's capacity (24 ports shared by its types,
1 or 2 ports each: its probe fails; the mdev core's own EUSERS is for parents
that do not count), EINVAL for a malformed UUID.
"""

from __future__ import annotations

import errno
import json
import os
import re

import pytest

from vfio.errors import VfioError
from vfio.host.mdev import (DeviceApi, Definitions, MdevDefinition, MdevError, MdevHost, MdevInUse, MdevNotFound,
                            StartPolicy, config_dir_for, mdev_cdev_path, mdev_group_path, normalize_uuid)
from vfio.host.sysfs import DryRunSysfs, Host, Sysfs

U1 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1001"
U2 = "83b8f4f2-509f-382f-3c1e-e6bfe0fa1002"

MTTY_TYPES = {"mtty-1": ("Single port serial", 1), "mtty-2": ("Dual port serial", 2)}
MTTY_PORTS = 24
MDPY_TYPES = {"mdpy-hd": "virtual display, 1920x1080 framebuffer", "mdpy-vga": "virtual display, 640x480 framebuffer"}


def _w(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def _ln(target: str, link: str) -> None:
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(target, link)


def build_tree(root: str) -> str:
    """A guest-like root with the mtty and mdpy parents and no mdev yet."""
    for name, (pretty, _) in MTTY_TYPES.items():
        t = f"{root}/sys/devices/virtual/mtty/mtty/mdev_supported_types/{name}"
        _w(f"{t}/name", pretty + "\n")
        _w(f"{t}/device_api", "vfio-pci\n")
        _w(f"{t}/available_instances", f"{MTTY_PORTS // MTTY_TYPES[name][1]}\n")
        _w(f"{t}/create", "")
        os.makedirs(f"{t}/devices")
    for name, desc in MDPY_TYPES.items():
        t = f"{root}/sys/devices/virtual/mdpy/mdpy/mdev_supported_types/{name}"
        _w(f"{t}/name", name + "\n")
        _w(f"{t}/description", desc + "\n")
        _w(f"{t}/device_api", "vfio-pci\n")
        _w(f"{t}/available_instances", "4\n")
        _w(f"{t}/create", "")
        os.makedirs(f"{t}/devices")
    _ln("../../devices/virtual/mtty/mtty", f"{root}/sys/class/mdev_bus/mtty")
    _ln("../../devices/virtual/mdpy/mdpy", f"{root}/sys/class/mdev_bus/mdpy")
    os.makedirs(f"{root}/sys/bus/mdev/devices")
    os.makedirs(f"{root}/sys/bus/mdev/drivers/mtty")
    os.makedirs(f"{root}/sys/bus/pci/devices")
    os.makedirs(f"{root}/sys/kernel/iommu_groups")
    os.makedirs(f"{root}/dev/vfio/devices")
    return root


class KernelLikeSysfs(Sysfs):
    """A fixture tree whose ``create`` and ``remove`` attributes act like the kernel's."""

    def write(self, rel: str, value: str) -> None:
        m = re.match(r"^sys/devices/virtual/(\w+)/\1/mdev_supported_types/([\w-]+)/create$", rel)
        if m:
            return self._create(m.group(1), m.group(2), value)
        m = re.match(r"^sys/bus/mdev/devices/([0-9a-f-]{36})/remove$", rel)
        if m and value.strip() == "1":
            return self._remove(m.group(1))
        super().write(rel, value)

    def _create(self, parent: str, type_id: str, value: str) -> None:
        if not re.match(r"^[0-9a-fA-F]{8}(-[0-9a-fA-F]{4}){3}-[0-9a-fA-F]{12}\n?$", value):
            raise VfioError(errno.EINVAL, f"writing {value!r} to create")
        uuid = value.strip().lower()
        root = self.root
        if os.path.exists(f"{root}/sys/bus/mdev/devices/{uuid}"):
            raise VfioError(errno.EEXIST, f"writing {uuid!r} to create")
        pdir = f"sys/devices/virtual/{parent}/{parent}"
        tdir = f"{pdir}/mdev_supported_types/{type_id}"
        if int(self.read(f"{tdir}/available_instances")) <= 0:
            raise VfioError(errno.ENOSPC, f"writing {uuid!r} to create")
        groups = [int(g) for g in os.listdir(f"{root}/sys/kernel/iommu_groups")]
        g = str(max(groups, default=5) + 1)
        n = len(os.listdir(f"{root}/sys/bus/mdev/devices"))
        d = f"{root}/{pdir}/{uuid}"
        os.makedirs(f"{d}/vfio-dev/vfio{n + 1}")
        _w(f"{d}/remove", "")
        _ln(f"../mdev_supported_types/{type_id}", f"{d}/mdev_type")
        _ln(f"../../../../../kernel/iommu_groups/{g}", f"{d}/iommu_group")
        _ln(f"../../../../../bus/mdev/drivers/{parent}", f"{d}/driver")
        _ln(f"../../../devices/virtual/{parent}/{parent}/{uuid}", f"{root}/sys/bus/mdev/devices/{uuid}")
        _ln(f"../../../{uuid}", f"{root}/{tdir}/devices/{uuid}")
        _w(f"{root}/sys/kernel/iommu_groups/{g}/name", "vfio-noiommu\n")
        _ln(f"../../../../devices/virtual/{parent}/{parent}/{uuid}", f"{root}/sys/kernel/iommu_groups/{g}/devices/{uuid}")
        _w(f"{root}/dev/vfio/{g}", "")
        _w(f"{root}/dev/vfio/devices/vfio{n + 1}", "")
        self._recount(parent)

    def _remove(self, uuid: str) -> None:
        import shutil
        root = self.root
        real = os.path.realpath(f"{root}/sys/bus/mdev/devices/{uuid}")
        tdir = os.path.realpath(f"{real}/mdev_type")
        g = os.path.basename(os.readlink(f"{real}/iommu_group"))
        cdev = os.listdir(f"{real}/vfio-dev")[0]
        os.unlink(f"{tdir}/devices/{uuid}")
        os.unlink(f"{root}/sys/bus/mdev/devices/{uuid}")
        shutil.rmtree(real)
        shutil.rmtree(f"{root}/sys/kernel/iommu_groups/{g}")
        os.unlink(f"{root}/dev/vfio/{g}")
        os.unlink(f"{root}/dev/vfio/devices/{cdev}")
        self._recount(os.path.basename(os.path.dirname(real)))

    def _recount(self, parent: str) -> None:
        if parent != "mtty":
            return
        tdir = f"{self.root}/sys/devices/virtual/mtty/mtty/mdev_supported_types"
        used = sum(len(os.listdir(f"{tdir}/{t}/devices")) * ports for t, (_, ports) in MTTY_TYPES.items())
        for t, (_, ports) in MTTY_TYPES.items():
            _w(f"{tdir}/{t}/available_instances", f"{(MTTY_PORTS - used) // ports}\n")


@pytest.fixture
def root(tmp_path):
    return build_tree(str(tmp_path / "root"))


@pytest.fixture
def host(root):
    return MdevHost(sysfs=KernelLikeSysfs(root))


# ---- the model ---------------------------------------------------------------------------

def test_parents_and_types_as_sysfs_shows_them(host):
    assert host.parent_names() == ["mdpy", "mtty"]
    mtty = host.parent("mtty")
    assert mtty.path == "sys/devices/virtual/mtty/mtty"
    assert [(t.type_id, t.name, t.device_api, t.available_instances, t.description) for t in mtty.types] == [
        ("mtty-1", "Single port serial", DeviceApi.PCI, 24, None), ("mtty-2", "Dual port serial", DeviceApi.PCI, 12, None)]
    hd = host.parent("mdpy").type("mdpy-hd")
    assert hd.description == "virtual display, 1920x1080 framebuffer" and hd.device_api == "vfio-pci"
    assert [t.type_id for t in host.types()] == ["mdpy-hd", "mdpy-vga", "mtty-1", "mtty-2"]


def test_an_unknown_device_api_is_kept_as_the_kernel_says_it(root, host):
    _w(f"{root}/sys/devices/virtual/mdpy/mdpy/mdev_supported_types/mdpy-vga/device_api", "vfio-future\n")
    assert host.parent("mdpy").type("mdpy-vga").device_api == "vfio-future"
    assert host.parent("mdpy").type("mdpy-hd").device_api is DeviceApi.PCI


def test_create_then_the_device_is_seen_everywhere(host, root):
    uuid = host.create("mtty", "mtty-2", U1.upper())
    assert uuid == U1
    d = host.device(U1)
    assert (d.uuid, d.parent, d.type_id, d.device_api, d.driver, d.cdev) == (U1, "mtty", "mtty-2", DeviceApi.PCI, "mtty", "vfio1")
    assert d.iommu_group == "6" and d.path == f"sys/devices/virtual/mtty/mtty/{U1}"
    assert host.parent("mtty").type("mtty-2").devices == (U1,)
    # mtty's capacity is shared: a dual-port device takes two of the 24 ports
    assert [t.available_instances for t in host.parent("mtty").types] == [22, 11]
    # the fd layer finds its group and cdev nodes under the same root
    assert mdev_group_path(U1, root) == f"{root}/dev/vfio/6"
    assert mdev_cdev_path(U1, root) == f"{root}/dev/vfio/devices/vfio1"
    # the PCI host model lists the mdev's group without taking the UUID for a PCI address
    h = Host(sysfs=host.sysfs)
    g = h.group("6")
    assert (g.devices, g.others) == ((), (U1,))
    assert not h.is_noiommu_group("6")          # named vfio-noiommu, but an mdev's emulated-IOMMU group


def test_create_with_a_generated_uuid(host):
    uuid = host.create("mdpy", "mdpy-hd")
    assert normalize_uuid(uuid) == uuid and host.exists(uuid)


@pytest.mark.parametrize("args, err, words", [
    (("nope", "mtty-1", U1), errno.ENODEV, ["no mdev parent 'nope'", "/sys/class/mdev_bus/nope", "mdpy, mtty"]),
    (("mtty", "mtty-9", U1), errno.ENOENT, ["no type 'mtty-9'", "mtty-1, mtty-2"]),
    (("mtty", "2", U1), errno.ENOENT, ["no type '2'"]),
    (("mtty", "mtty-1", "83b8f4f2-509f-382f"), errno.EINVAL, ["malformed mdev UUID"]),
    (("mtty", "mtty-1", "zzzzzzzz-509f-382f-3c1e-e6bfe0fa1001"), errno.EINVAL, ["malformed mdev UUID"]),
])
def test_create_refusals_name_the_thing_and_change_nothing(host, root, args, err, words):
    before = sorted(os.listdir(f"{root}/sys/bus/mdev/devices"))
    with pytest.raises(MdevError) as e:
        host.create(*args)
    assert e.value.errno == err
    for w in words:
        assert w in str(e.value)
    assert sorted(os.listdir(f"{root}/sys/bus/mdev/devices")) == before


def test_uuid_in_use_and_no_instances_left(host):
    host.create("mtty", "mtty-2", U1)
    with pytest.raises(MdevError) as e:
        host.create("mdpy", "mdpy-hd", U1)
    assert e.value.errno == errno.EEXIST and U1 in str(e.value) and "mtty-2 mdev of mtty" in str(e.value)
    made = [host.create("mtty", "mtty-2") for _ in range(11)]
    assert len(made) == 11 and host.parent("mtty").type("mtty-2").available_instances == 0
    with pytest.raises(MdevError) as e:
        host.create("mtty", "mtty-2")
    assert e.value.errno == errno.EUSERS and "no instances left" in str(e.value)
    assert len(host.uuids()) == 12


def test_the_kernels_own_refusal_keeps_its_errno(root):
    class Racy(KernelLikeSysfs):            # another process took the UUID between check and write
        def write(self, rel, value):
            if rel.endswith("/create"):
                raise VfioError(errno.EEXIST, f"writing {value!r} to /{rel}")
            super().write(rel, value)
    with pytest.raises(VfioError) as e:
        MdevHost(sysfs=Racy(root)).create("mtty", "mtty-1", U1)
    assert e.value.errno == errno.EEXIST and "UUID is in use" in str(e.value) and "/create" in str(e.value)


def test_the_parents_own_capacity_refusal_is_said(root):
    class Unchecked(MdevHost):              # past the check, as when another process won the last port
        def parent(self, name):
            from dataclasses import replace
            p = super().parent(name)
            return replace(p, types=tuple(replace(t, available_instances=1) for t in p.types))
    h = Unchecked(sysfs=KernelLikeSysfs(root))
    for _ in range(12):
        h.create("mtty", "mtty-2")
    with pytest.raises(VfioError) as e:
        h.create("mtty", "mtty-2", U1)
    assert e.value.errno == errno.ENOSPC and "no instances left" in str(e.value)


def test_not_root_is_said_with_eacces(root):
    class NotRoot(KernelLikeSysfs):
        def write(self, rel, value):
            raise VfioError(errno.EACCES, f"writing {value!r} to /{rel}")
    with pytest.raises(VfioError) as e:
        MdevHost(sysfs=NotRoot(root)).create("mtty", "mtty-1", U1)
    assert e.value.errno == errno.EACCES and "needs root" in str(e.value)


def test_dry_run_records_the_write_and_makes_nothing(root):
    dry = MdevHost(sysfs=DryRunSysfs(root))
    assert dry.create("mtty", "mtty-1", U1) == U1
    assert [str(a) for a in dry.sysfs.actions] == [
        f"echo {U1} > /sys/devices/virtual/mtty/mtty/mdev_supported_types/mtty-1/create"]
    assert not dry.exists(U1)


def test_remove(host, root):
    host.create("mtty", "mtty-1", U1)
    host.remove(U1)
    assert not host.exists(U1) and host.uuids() == []
    assert host.parent("mtty").type("mtty-1").available_instances == 24
    with pytest.raises(MdevNotFound) as e:
        host.remove(U1)
    assert e.value.errno == errno.ENODEV and U1 in str(e.value)


def test_remove_refuses_an_open_mdev(host, monkeypatch):
    host.create("mtty", "mtty-1", U1)
    monkeypatch.setattr(MdevHost, "holders", lambda self, uuid: ["/dev/vfio/6 (open)"])
    with pytest.raises(MdevInUse) as e:
        host.remove(U1)
    assert isinstance(e.value, OSError) and e.value.errno == errno.EBUSY
    assert U1 in str(e.value) and "/dev/vfio/6" in str(e.value)
    assert host.exists(U1)


def test_a_captured_tree_has_no_holders(host):
    host.create("mtty", "mtty-1", U1)
    assert host.holders(U1) == []          # not a live root: nothing is asked of /proc


def test_a_failing_attribute_write_removes_the_new_mdev(root):
    class NoAttr(KernelLikeSysfs):
        def write(self, rel, value):
            if rel.endswith("/assign_adapter"):
                raise VfioError(errno.EINVAL, f"writing {value!r} to /{rel}")
            super().write(rel, value)
    h = MdevHost(sysfs=NoAttr(root))
    with pytest.raises(VfioError) as e:
        h.create("mtty", "mtty-1", U1, attrs=[("assign_adapter", "5")])
    assert e.value.errno == errno.EINVAL and not h.exists(U1)


def test_uuid_normalization():
    assert normalize_uuid(" " + U1.upper() + "\n") == U1
    for bad in ("", U1[:-1], U1 + "0", U1.replace("-", ""), "{" + U1 + "}", None):
        with pytest.raises(MdevError, match="malformed mdev UUID"):
            normalize_uuid(bad)


# ---- definitions -------------------------------------------------------------------------

def test_definitions_round_trip_in_mdevctls_layout(tmp_path):
    defs = Definitions(str(tmp_path / "mdev.d"))
    d = MdevDefinition(U1, "mtty", "mtty-2", StartPolicy.AUTO, (("a", "1"),))
    path = defs.save(d)
    assert path == str(tmp_path / "mdev.d" / "mtty" / U1)
    with open(path) as f:
        assert json.load(f) == {"mdev_type": "mtty-2", "start": "auto", "attrs": [{"a": "1"}]}
    got = defs.get(U1.upper())
    assert (got.uuid, got.parent, got.type_id, got.start, got.attrs) == (U1, "mtty", "mtty-2", StartPolicy.AUTO, (("a", "1"),))
    with pytest.raises(MdevError) as e:
        defs.save(d)
    assert e.value.errno == errno.EEXIST
    defs.delete(got)
    assert defs.all() == [] and not os.path.exists(os.path.dirname(path))
    with pytest.raises(MdevNotFound):
        defs.get(U1)


@pytest.mark.parametrize("content, words", [
    ("{", "not JSON"),
    ("[]", "\"mdev_type\""),
    ('{"mdev_type": "mtty-1", "start": "boot"}', "\"start\" is 'boot'"),
    ('{"mdev_type": "mtty-1", "attrs": {"a": 1}}', "\"attrs\" must be a list"),
    ('{"mdev_type": "mtty-1", "attrs": [{"a": "1", "b": "2"}]}', "attrs[0]"),
    ('{"mdev_type": "mtty-1", "attrs": [{"a/b": "1"}]}', "not an attribute"),
])
def test_a_malformed_definition_names_the_file(tmp_path, content, words):
    _w(str(tmp_path / "d" / "mtty" / U1), content)
    with pytest.raises(MdevError) as e:
        Definitions(str(tmp_path / "d")).all()
    assert words in str(e.value) and f"mtty/{U1}" in str(e.value)


def test_files_not_named_by_a_uuid_are_not_definitions(tmp_path):
    _w(str(tmp_path / "d" / "mtty" / "README"), "notes")
    _w(str(tmp_path / "d" / "mtty" / U2), '{"mdev_type": "mtty-1"}')
    assert [d.uuid for d in Definitions(str(tmp_path / "d")).all()] == [U2]


def test_config_dir_choice(tmp_path, monkeypatch):
    monkeypatch.delenv("VFIO_MDEV_CONFIG_DIR", raising=False)
    assert config_dir_for(str(tmp_path)) == str(tmp_path / "etc/vfio-toolkit/mdev.d")
    monkeypatch.setenv("VFIO_MDEV_CONFIG_DIR", "/somewhere")
    assert config_dir_for(str(tmp_path)) == "/somewhere"
    assert config_dir_for(str(tmp_path), "/given") == "/given"
