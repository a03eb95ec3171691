"""Device-tree devices on the host side, against a small sysfs + device-tree tree.

The tree (built per test) is the part of QEMU's arm64 ``virt`` guest the code
reads: ``/sys/firmware/devicetree/base`` with a virtio-mmio node, a PL031 node
and a node behind a ``simple-bus`` with a non-empty ``ranges``; the platform
and AMBA bus directories with ``of_node`` links; vfio-platform/vfio-amba
driver directories.  :class:`ReactingSysfs` makes driver writes take effect as
``drivers/base/bus.c`` does (``driver_override`` + ``drivers_probe`` binds the
override driver; ``drivers/X/unbind`` unbinds), and binding to a VFIO driver
in no-IOMMU mode makes a ``vfio-noiommu`` group, as ``vfio_noiommu_group_alloc``
does.  The real kernel's answers are checked in the guest
(tests/kernel/test_platform_devices.py).
"""

from __future__ import annotations

import errno
import io
import json
import os
import struct

import pytest

from vfio.errors import InvalidValue, VfioError
from vfio.host import assign_cli
from vfio.host.assign import AssignmentFailed, AssignmentRefused, PlatformAssigner, StateCorrupt
from vfio.host.inspect import host_report, render_host
from vfio.host.sysfs import DeviceNotFound, DryRunSysfs, Host, Sysfs
from vfio.platform import (Bus, DtOrigin, DtOrigins, DtProp, find_platform_device, platform_cdev_path,
                           platform_devices, platform_group_path, region_addresses)
from vfio.record import format as F

DT = "sys/firmware/devicetree/base"
VM = "a000000.virtio_mmio"
RTC = "9010000.pl031"
SUB = "1c090000.sub"


def _cells(*vals) -> bytes:
    return b"".join(struct.pack(">I", v) for v in vals)


def _put(root, rel, data=b""):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    with open(p, "wb" if isinstance(data, bytes) else "w") as f:
        f.write(data)


def _link(root, rel, target_rel):
    p = os.path.join(root, rel)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    os.symlink(os.path.relpath(os.path.join(root, target_rel), os.path.dirname(p)), p)


@pytest.fixture
def tree(tmp_path):
    root = str(tmp_path / "root")
    _put(root, f"{DT}/#address-cells", _cells(2))
    _put(root, f"{DT}/#size-cells", _cells(2))
    _put(root, f"{DT}/virtio_mmio@a000000/reg", _cells(0, 0xA000000, 0, 0x200))
    _put(root, f"{DT}/virtio_mmio@a000000/interrupts", _cells(0, 0x10, 1))
    _put(root, f"{DT}/virtio_mmio@a000000/compatible", b"virtio,mmio\0")
    _put(root, f"{DT}/pl031@9010000/reg", _cells(0, 0x9010000, 0, 0x1000))
    _put(root, f"{DT}/pl031@9010000/compatible", b"arm,pl031\0arm,primecell\0")
    # a bus at 0x1c000000 whose children use 1+1 cells and offsets from 0
    _put(root, f"{DT}/bus@1c000000/#address-cells", _cells(1))
    _put(root, f"{DT}/bus@1c000000/#size-cells", _cells(1))
    _put(root, f"{DT}/bus@1c000000/ranges", _cells(0, 0, 0x1C000000, 0x100000))
    _put(root, f"{DT}/bus@1c000000/sub@90000/reg", _cells(0x90000, 0x1000, 0x91000, 0x100))
    for bus, name, node in (("platform", VM, "virtio_mmio@a000000"), ("amba", RTC, "pl031@9010000"),
                            ("platform", SUB, "bus@1c000000/sub@90000")):
        d = f"sys/devices/platform/{name}"
        _put(root, f"{d}/driver_override", "(null)\n")
        _link(root, f"{d}/of_node", f"{DT}/{node}")
        _link(root, f"sys/bus/{bus}/devices/{name}", d)
    _put(root, f"sys/devices/platform/{RTC}/resource", "0x0000000009010000\t0x0000000009010fff\t0x00000200\n")
    # a consumer link, as fw_devlink makes for gpio-keys on a GPIO controller
    _put(root, "sys/devices/platform/gpio-keys/driver_override", "(null)\n")
    for drv in ("sys/bus/platform/drivers/vfio-platform", "sys/bus/amba/drivers/vfio-amba",
                "sys/bus/platform/drivers/gpio-keys"):
        os.makedirs(os.path.join(root, drv))
    _put(root, "sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "Y\n")
    _put(root, "sys/module/vfio_platform/parameters/reset_required", "N\n")
    os.makedirs(os.path.join(root, "dev/vfio"))
    _put(root, "dev/vfio/vfio")
    os.makedirs(os.path.join(root, "sys/kernel/iommu_groups"))
    return root


class ReactingSysfs(Sysfs):
    """Driver writes on the platform/AMBA buses, applied to the tree like the kernel."""

    def __init__(self, root, refuse_probe=()):
        super().__init__(root)
        self.writes = []
        self.refuse_probe = set(refuse_probe)

    def _dev(self, bus, name):
        return os.path.realpath(self.path(f"sys/bus/{bus}/devices/{name}"))

    def write(self, rel, value):
        self.writes.append((rel, value))
        parts = rel.split("/")
        if parts[-1] == "driver_override":
            v = value.strip()
            with open(self.path(rel), "w") as f:
                f.write((v or "(null)") + "\n")
            return
        bus, name = parts[2], value.strip()
        d = self._dev(bus, name)
        if parts[-1] == "unbind":
            drv = parts[-2]
            if os.path.basename(os.readlink(f"{d}/driver")) != drv if os.path.islink(f"{d}/driver") else True:
                raise VfioError(errno.ENODEV, f"writing {rel}")
            os.unlink(f"{d}/driver")
            for g in os.listdir(self.path("dev/vfio")):
                if g.startswith("noiommu-") and os.path.islink(f"{d}/iommu_group") and \
                        g == "noiommu-" + os.path.basename(os.readlink(f"{d}/iommu_group")):
                    os.unlink(self.path(f"dev/vfio/{g}"))
            return
        if parts[-1] in ("drivers_probe", "bind"):
            with open(f"{d}/driver_override") as f:
                ov = f.read().strip()
            drv = parts[-2] if parts[-1] == "bind" else (None if ov == "(null)" else ov)
            if drv is None:
                return
            if name in self.refuse_probe:
                return                      # the driver's probe failed: no driver bound
            os.symlink(self.path(f"sys/bus/{bus}/drivers/{drv}"), f"{d}/driver")
            if drv.startswith("vfio-"):
                gdir = self.path("sys/kernel/iommu_groups")
                if not os.path.islink(f"{d}/iommu_group"):
                    n = str(len(os.listdir(gdir)))
                    os.makedirs(f"{gdir}/{n}/devices")
                    with open(f"{gdir}/{n}/name", "w") as f:
                        f.write("vfio-noiommu\n")
                    os.symlink(d, f"{gdir}/{n}/devices/{name}")
                    os.symlink(f"{gdir}/{n}", f"{d}/iommu_group")
                n = os.path.basename(os.readlink(f"{d}/iommu_group"))
                open(self.path(f"dev/vfio/noiommu-{n}"), "w").close()
            return
        raise AssertionError(f"unexpected write {rel} {value!r}")


# ---- reading the tree ----------------------------------------------------------------------

def test_dtprop_values_are_the_record_formats():
    assert [int(p) for p in DtProp] == [F.DT_PROP_REG, F.DT_PROP_RANGES, F.DT_PROP_INTERRUPTS,
                                        F.DT_PROP_INTERRUPT_MAP]
    assert DtProp.INTERRUPT_MAP.property_name == "interrupt-map"


def test_find_platform_and_amba_devices(tree):
    vm = find_platform_device(VM, tree)
    assert (vm.bus, vm.dt_path, vm.driver, vm.driver_override, vm.iommu_group) == \
        (Bus.PLATFORM, "/virtio_mmio@a000000", None, None, None)
    assert vm.compatible == ("virtio,mmio",)
    rtc = find_platform_device(RTC, tree)
    assert rtc.bus is Bus.AMBA and rtc.bus.vfio_driver == "vfio-amba" and rtc.compatible[1] == "arm,primecell"
    assert [n.name for n in platform_devices(tree)] == sorted([VM, SUB]) + [RTC]


@pytest.mark.parametrize("bad", ["", "..", "a/b", "x\0y"])
def test_a_malformed_name_is_refused(tree, bad):
    with pytest.raises(InvalidValue):
        find_platform_device(bad, tree)


def test_an_unknown_device_names_both_buses(tree):
    with pytest.raises(VfioError) as ei:
        find_platform_device("nope.dev", tree)
    assert ei.value.errno == errno.ENODEV
    assert "/sys/bus/platform/devices/nope.dev" in str(ei.value) and "/sys/bus/amba/devices/nope.dev" in str(ei.value)


def test_reg_addresses_translate_through_ranges(tree):
    assert region_addresses("/virtio_mmio@a000000", tree) == [0xA000000]
    assert region_addresses("/bus@1c000000/sub@90000", tree) == [0x1C090000, 0x1C091000]


def test_a_reg_of_partial_entries_is_refused_naming_it(tree):
    _put(tree, f"{DT}/virtio_mmio@a000000/reg", _cells(0, 0xA000000, 0))
    with pytest.raises(InvalidValue, match="virtio_mmio@a000000/reg: 12 bytes"):
        region_addresses("/virtio_mmio@a000000", tree)


def test_positional_origins_and_from_record():
    o = DtOrigins.positional("/n@0", 2, 1)
    assert o.region(1) == DtOrigin("/n@0", DtProp.REG, 1) and o.irq(0) == DtOrigin("/n@0", DtProp.INTERRUPTS, 0)
    assert o.region(2) is None and o.irq(-1) is None
    rec = F.DeviceRecord([F.Region(0, F.REGION_READ, 0, 0x200, 0, [F.DtPath("/n@0"), F.DtIndex(0, 0)]),
                          F.Interrupt(0, 1, 1, [F.DtPath("/n@0")])])
    got = DtOrigins.from_record(rec)
    assert got.region(0) == DtOrigin("/n@0", DtProp.REG, 0)
    assert got.irq(0) == DtOrigin("/n@0", DtProp.INTERRUPTS, 0)     # no DTINDEX: entry 0
    assert DtOrigins.from_record(F.DeviceRecord([F.Region(0, 0, 0, 4, 0, [])])) is None
    # a prop_type the format does not name is kept as its number, not refused
    odd = DtOrigins.from_record(F.DeviceRecord([F.Region(0, 0, 0, 4, 0, [F.DtPath("/n@0"), F.DtIndex(9, 3)])]))
    assert odd.region(0) == DtOrigin("/n@0", 9, 3) and str(odd.region(0)) == "/n@0 property-type-9[3]"


def test_group_and_cdev_paths_say_why_there_are_none(tree):
    with pytest.raises(VfioError) as ei:
        platform_group_path(VM, tree)
    assert ei.value.errno == errno.ENOENT and "no-IOMMU" in str(ei.value)
    with pytest.raises(VfioError) as ei:
        platform_cdev_path(VM, tree)
    assert ei.value.errno == errno.ENOENT and "vfio-platform" in str(ei.value)


# ---- vfio-assign ---------------------------------------------------------------------------

def test_bind_and_release_round_trip(tree, tmp_path):
    sysfs = ReactingSysfs(tree)
    pa = PlatformAssigner(Host(sysfs=sysfs), str(tmp_path / "st.json"))
    plan = pa.assign([VM, RTC])
    assert sorted(n.name for n in plan.devices) == [RTC, VM]
    assert sysfs.writes == [                        # by name, each on its own bus
        (f"sys/bus/amba/devices/{RTC}/driver_override", "vfio-amba"),
        ("sys/bus/amba/drivers_probe", RTC),
        (f"sys/bus/platform/devices/{VM}/driver_override", "vfio-platform"),
        ("sys/bus/platform/drivers_probe", VM)]
    vm, rtc = find_platform_device(VM, tree), find_platform_device(RTC, tree)
    assert vm.driver == "vfio-platform" and rtc.driver == "vfio-amba"
    assert platform_group_path(VM, tree).endswith(f"dev/vfio/noiommu-{vm.iommu_group}")
    with pytest.raises(VfioError) as ei:
        platform_cdev_path(VM, tree)                # a no-IOMMU device has no cdev
    assert ei.value.errno == errno.ENODEV and "no-IOMMU" in str(ei.value)
    st = json.load(open(tmp_path / "st.json"))["devices"]
    assert st[VM]["status"] == "assigned" and st[VM]["bus"] == "platform" and st[VM]["iommu_group"] == vm.iommu_group
    # the listing shows them with their nodes, on vfio
    rep = {p["name"]: p for p in host_report(Host(tree), ask_kernel=False)["platform_devices"]}
    assert rep[VM]["on_vfio"] and rep[VM]["dt_path"] == "/virtio_mmio@a000000" and rep[VM]["reg"][0]["address"] == 0xA000000
    assert rep[SUB]["reg"] == [{"index": 0, "address": 0x1C090000}, {"index": 1, "address": 0x1C091000}]
    out = io.StringIO()
    render_host(host_report(Host(tree), ask_kernel=False), out)
    assert f"{VM} (platform) /virtio_mmio@a000000 [virtio,mmio] reg[0] 0xa000000  driver: vfio-platform" in out.getvalue()
    sysfs.writes.clear()
    pa.release()
    vm, rtc = find_platform_device(VM, tree), find_platform_device(RTC, tree)
    assert (vm.driver, vm.driver_override, rtc.driver, rtc.driver_override) == (None, None, None, None)
    assert json.load(open(tmp_path / "st.json"))["devices"] == {}


def test_a_failed_probe_rolls_back_and_names_the_reset_rule(tree, tmp_path):
    _put(tree, "sys/module/vfio_platform/parameters/reset_required", "Y\n")
    sysfs = ReactingSysfs(tree, refuse_probe={VM})
    pa = PlatformAssigner(Host(sysfs=sysfs), str(tmp_path / "st.json"))
    with pytest.raises(AssignmentFailed) as ei:
        pa.assign([RTC, VM])
    assert "reset_required" in str(ei.value) and not ei.value.incomplete
    for name in (VM, RTC):       # both back as they were, the one that did bind too
        n = find_platform_device(name, tree)
        assert (n.driver, n.driver_override) == (None, None)
    assert json.load(open(tmp_path / "st.json"))["devices"] == {}


def test_refusals(tree, tmp_path):
    host = Host(sysfs=DryRunSysfs(tree))
    pa = PlatformAssigner(host, str(tmp_path / "st.json"))
    # a device something bound depends on
    _link(tree, f"sys/devices/platform/{VM}/consumer:platform:gpio-keys", "sys/devices/virtual/devlink/x")
    _link(tree, "sys/devices/virtual/devlink/x/consumer", "sys/devices/platform/gpio-keys")
    _link(tree, "sys/devices/platform/gpio-keys/driver", "sys/bus/platform/drivers/gpio-keys")
    with pytest.raises(AssignmentRefused, match="gpio-keys .on gpio-keys. depends on it"):
        pa.plan_assign([VM])
    assert pa.plan_assign([VM], force=True).devices
    # no IOMMU group and no no-IOMMU mode
    _put(tree, "sys/module/vfio/parameters/enable_unsafe_noiommu_mode", "N\n")
    with pytest.raises(AssignmentRefused, match="no IOMMU group"):
        pa.plan_assign([RTC])
    with pytest.raises(DeviceNotFound):
        pa.plan_assign(["nope.dev"])
    with pytest.raises(AssignmentRefused, match="not assigned by vfio-assign"):
        pa.plan_release([RTC], {"devices": {}})


def test_a_state_file_with_a_bad_platform_entry_is_corrupt(tree, tmp_path):
    p = tmp_path / "st.json"
    p.write_text(json.dumps({"schema": "vfio-assign-state/1",
                             "devices": {VM: {"bus": "pci", "driver": None, "driver_override": None,
                                              "status": "assigned"}}}))
    with pytest.raises(StateCorrupt, match="bus 'pci'"):
        PlatformAssigner(Host(tree), str(p)).status()


def test_cli_dry_run_and_json(tree, tmp_path, capsys):
    out = io.StringIO()
    st = str(tmp_path / "st.json")
    assert assign_cli.main(["bind", VM, "--dry-run", "--root", tree, "--state", st], out=out) == 0
    text = out.getvalue()
    assert f"/sys/bus/platform/devices/{VM}/driver_override" in text and "vfio-platform" in text
    assert not os.path.exists(st)
    out = io.StringIO()
    assert assign_cli.main(["bind", RTC, "--dry-run", "--json", "--root", tree, "--state", st], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["devices"][0]["bus"] == "amba" and doc["devices"][0]["dt_path"] == "/pl031@9010000"
    assert [w["path"] for w in doc["writes"]] == [f"/sys/bus/amba/devices/{RTC}/driver_override",
                                                  "/sys/bus/amba/drivers_probe"]
    assert assign_cli.main(["bind", VM, "0000:00:01.0", "--dry-run", "--root", tree, "--state", st],
                           out=io.StringIO()) == 2
    assert "separate runs" in capsys.readouterr().err


def test_vfio_inspect_takes_a_platform_device_name(tree):
    from vfio.host import inspect
    out = io.StringIO()
    assert inspect.main([VM, "--root", tree], out=out) == 0
    text = out.getvalue()
    assert f"{VM} (platform) device-tree node /virtio_mmio@a000000 [virtio,mmio]" in text
    assert "reg[0]: 0xa000000" in text and "VFIO driver for it: vfio-platform" in text
    out = io.StringIO()
    assert inspect.main(["--json", SUB, "--root", tree], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["kind"] == "platform" and doc["dt_path"] == "/bus@1c000000/sub@90000" and doc["vfio"] is None
    assert [r["address"] for r in doc["reg"]] == [0x1C090000, 0x1C091000]


def test_status_reconciles_platform_records(tree):
    from vfio.host.assign import PLATFORM_STATE, Condition
    sysfs = ReactingSysfs(tree)
    pa = PlatformAssigner(Host(sysfs=sysfs))
    assert pa.state_path == os.path.join(tree, PLATFORM_STATE)
    pa.assign([VM, RTC])
    # by hand, behind vfio-assign's back: the transport leaves vfio-platform
    sysfs.write("sys/bus/platform/drivers/vfio-platform/unbind", VM)
    rows = {r.bdf: r for r in pa.reconcile()}
    assert rows[RTC].condition is Condition.ASSIGNED and rows[VM].condition is Condition.INTERRUPTED
    assert rows[VM].release_will == (f"set driver_override of {VM} to (none)",)
    out = io.StringIO()
    assert assign_cli.main(["status", "--root", tree], out=out) == 0
    assert f"{VM} (platform, /virtio_mmio@a000000) INTERRUPTED" in out.getvalue()
    out = io.StringIO()
    assert assign_cli.main(["status", "--json", "--root", tree], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["devices"] == {} and doc["platform_devices"][RTC]["now"]["driver"] == "vfio-amba"
    pa.release()
    v = find_platform_device(VM, tree)
    assert (v.driver, v.driver_override) == (None, None)
