"""vfio-assign's whole-state commands, vfio-capture by name and group viability
for device-tree devices, on the arm64 guest's real vfio-platform/vfio-amba.

Two devices (a virtio-mmio transport no virtio device sits behind, on the
platform bus, and the PL031 RTC, on the AMBA bus) are bound with
``vfio-assign bind`` into vfio-assign's default device-tree state file, then:
``vfio-capture NAME`` writes their DTPATH/DTINDEX records, ``status`` shows
them in the PCI shape with their device-tree origin, the prediction of their
(no-IOMMU) groups agrees with the kernel's VFIO_GROUP_GET_STATUS, and
``release --all`` -- no names -- gives both back.

Needs the arm64-platform leg: ``tools/vfio-harness --arch arm64 --iommu none
--devices edu --bind none -- python3 -m pytest -p no:benchmark
tests/kernel/test_platform2_assign.py -q``.
"""

from __future__ import annotations

import io
import json
import os

import pytest

from vfio import uapi
from vfio.host.assign import PLATFORM_STATE, PlatformAssigner
from vfio.host.assign_cli import main as assign_main
from vfio.host.sysfs import Host
from vfio.host.viability import group_viability, predict
from vfio.record import format as F
from vfio.record.cli import main as capture_main
from tests.kernel.test_platform_devices import PL031, PL031_NODE, _free_transport

pytestmark = [pytest.mark.kernel, pytest.mark.platform,
              pytest.mark.filterwarnings("ignore::vfio.container.NoIommuWarning")]


def _node_of(name: str) -> str:
    return f"/virtio_mmio@{int(name.split('.')[0], 16):x}"


@pytest.fixture(scope="module")
def bound():
    if os.environ.get("VFIO_HARNESS_ARCH") != "arm64" or os.environ.get("VFIO_HARNESS_IOMMU") != "none":
        pytest.fail("needs the arm64 guest in no-IOMMU mode (tools/vfio-harness --arch arm64 --iommu none; "
                    "the arm64-platform leg)", pytrace=False)
    host = Host("/")
    pa = PlatformAssigner(host)                 # the default state file: what release --all reads
    assert pa.state_path == "/" + PLATFORM_STATE
    if pa.status()["devices"]:
        pytest.fail(f"{pa.state_path} already records {sorted(pa.status()['devices'])}", pytrace=False)
    vm = _free_transport()
    before = {n: (host.platform_device(n).driver, host.platform_device(n).driver_override) for n in (vm, PL031)}
    out = io.StringIO()
    assert assign_main(["bind", vm, PL031], out=out) == 0, out.getvalue()
    yield {"virtio": vm, "before": before, "assigner": pa}
    if pa.status()["devices"]:                  # the release test did not run or failed
        pa.release()


def test_vfio_capture_by_name_writes_the_device_tree_records(bound, tmp_path, capsys):
    for name, node, addr in ((bound["virtio"], _node_of(bound["virtio"]), int(bound["virtio"].split(".")[0], 16)),
                             (PL031, PL031_NODE, 0x9010000)):
        path = tmp_path / f"{name}.vfiorec"
        assert capture_main([name, "-o", str(path)]) == 0
        assert f"{path}: " in capsys.readouterr().out
        rec = F.load(str(path))
        want = uapi.VFIO_DEVICE_FLAGS_AMBA if name == PL031 else uapi.VFIO_DEVICE_FLAGS_PLATFORM
        assert rec.device_info.vfio_flags & want
        reg, irq = rec.regions[0], rec.interrupts[0]
        assert [c.path for c in reg.children if type(c) is F.DtPath] == [node]
        assert [(c.prop_type, c.prop_index) for c in reg.children if type(c) is F.DtIndex] == [(F.DT_PROP_REG, 0)]
        assert reg.flags & F.REGION_PHYS and reg.addr == addr
        assert [c.path for c in irq.children if type(c) is F.DtPath] == [node]
        assert [(c.prop_type, c.prop_index) for c in irq.children if type(c) is F.DtIndex] == \
            [(F.DT_PROP_INTERRUPTS, 0)]


def test_a_bad_name_is_a_usage_error(bound, tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        capture_main(["nope.virtio_mmio", "-o", str(tmp_path / "x")])
    assert ei.value.code == 2 and "nor is 'nope.virtio_mmio' a platform or AMBA device" in capsys.readouterr().err


def test_status_shows_them_with_their_device_tree_origin(bound):
    out = io.StringIO()
    assert assign_main(["status"], out=out) == 0
    text = out.getvalue()
    vm = bound["virtio"]
    assert f"{vm} (platform, {_node_of(vm)}) assigned since " in text
    assert f"{PL031} (amba, {PL031_NODE}) assigned since " in text
    assert f"device-tree node {PL031_NODE} [arm,pl031, arm,primecell]: region i is reg[i] (reg[0] 0x9010000)" in text
    out = io.StringIO()
    assert assign_main(["status", "--json"], out=out) == 0
    assert sorted(json.loads(out.getvalue())["platform_devices"]) == sorted([vm, PL031])


def test_the_prediction_of_their_groups_agrees_with_the_kernel(bound):
    host = Host("/")
    for name in (bound["virtio"], PL031):
        g = host.group(host.platform_device(name).iommu_group)
        assert g.others == (name,) and not g.devices
        pred = predict(g, host)
        assert pred.viable and [m.bdf for m in pred.members] == [name]
        v = group_viability(host, g)
        assert v.source == "kernel" and v.viable


def test_release_all_gives_both_back(bound):
    pa = bound["assigner"]
    out = io.StringIO()
    assert assign_main(["release", "--all"], out=out) == 0, out.getvalue()
    assert out.getvalue().count("released: now on no driver") == 2
    host = Host("/")
    for name, was in bound["before"].items():
        n = host.platform_device(name)
        assert (n.driver, n.driver_override) == was
    assert pa.status()["devices"] == {}
