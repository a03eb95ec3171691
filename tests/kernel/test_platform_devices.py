"""Device-tree devices through vfio-platform and vfio-amba on the arm64 guest.

QEMU's arm64 ``virt`` machine describes 32 virtio-mmio transports (platform
bus, ``virtio,mmio``) and a PL031 RTC (AMBA bus, ``arm,pl031``) in its device
tree.  The transport this module takes is one no virtio device sits behind
(the harness's own use the highest ones), so it reads the virtio-mmio magic,
version and QEMU's vendor ID with device ID 0, and nothing in the guest needs
it.  Its interrupt is edge-triggered (virt's ``GIC_FDT_IRQ_FLAGS_EDGE_LO_HI``),
the PL031's level-triggered, so the two show vfio-platform's two kinds of
IRQ: not maskable, and maskable + automasked.

The run needs the arm64-platform leg (``--arch arm64 --iommu none``): virt's
SMMUv3 translates the PCIe bus only, so a platform device has an IOMMU group
only in no-IOMMU mode, where vfio-platform/vfio-amba make it a ``noiommu-N``
one.  Linux gives a no-IOMMU device no cdev, which the cdev test checks
toolkit and kernel agree on.  The devices are bound by vfio-assign's
:class:`~vfio.host.assign.PlatformAssigner` (through the ``vfio-assign`` command
line) and given back at the end.
"""

from __future__ import annotations

import errno
import glob
import io
import json
import os
import time
import warnings

import pytest

from vfio import uapi
from vfio.container import NoIommuWarning
from vfio.errors import VfioError
from vfio.host.assign import PlatformAssigner
from vfio.host.assign_cli import main as assign_main
from vfio.host.inspect import host_report
from vfio.host.inspect import main as inspect_main
from vfio.host.sysfs import Host
from vfio.platform import DtOrigin, DtProp, find_platform_device, open_platform_device
from vfio.record import format as F
from vfio.record.capture import capture_device
from vfio.record.replay import open_replay

pytestmark = [pytest.mark.kernel, pytest.mark.platform,
              pytest.mark.filterwarnings("ignore::vfio.container.NoIommuWarning")]

VIRTIO_MAGIC = 0x74726976           # "virt"
QEMU_VENDOR = 0x554D4551            # "QEMU"
PL031 = "9010000.pl031"
PL031_NODE = "/pl031@9010000"
# PrimeCell: peripheral ID 0-3 (part 0x031, designer 0x41 ARM, revision 1) then
# component ID 0-3, one byte in the low 8 bits of each word of the page's last 32 bytes
PL031_IDS = (0x31, 0x10, 0x14, 0x00, 0x0D, 0xF0, 0x05, 0xB1)
RTCDR, RTCMR, RTCIMSC, RTCRIS, RTCICR = 0x00, 0x04, 0x10, 0x14, 0x1C


def _free_transport() -> str:
    """The lowest virtio-mmio transport that no driver holds (no virtio device behind it)."""
    names = sorted((os.path.basename(p) for p in glob.glob("/sys/bus/platform/devices/*.virtio_mmio")),
                   key=lambda n: int(n.split(".")[0], 16))
    free = [n for n in names if not os.path.exists(f"/sys/bus/platform/devices/{n}/driver")
            or os.path.basename(os.readlink(f"/sys/bus/platform/devices/{n}/driver")) == "vfio-platform"]
    if not free:
        pytest.fail(f"no virtio-mmio transport without a driver among {names}", pytrace=False)
    return free[0]


@pytest.fixture(scope="module")
def state_path(tmp_path_factory):
    return str(tmp_path_factory.mktemp("assign") / "platform-state.json")


@pytest.fixture(scope="module")
def bound(state_path):
    """A free virtio-mmio transport and the PL031, on vfio-platform/vfio-amba through
    vfio-assign; given back (and checked) afterwards."""
    if os.environ.get("VFIO_HARNESS_ARCH") != "arm64" or os.environ.get("VFIO_HARNESS_IOMMU") != "none":
        pytest.fail("needs the arm64 guest in no-IOMMU mode (tools/vfio-harness --arch arm64 --iommu none; "
                    "the arm64-platform leg)", pytrace=False)
    vm = _free_transport()
    host = Host("/")
    before = {n: (host.platform_device(n).driver, host.platform_device(n).driver_override) for n in (vm, PL031)}
    pa = PlatformAssigner(host, state_path)
    out = io.StringIO()
    assert assign_main(["bind", vm, PL031, "--state", state_path], out=out) == 0, out.getvalue()
    assert f"{vm} (/virtio_mmio@" in out.getvalue() and "/dev/vfio/noiommu-" in out.getvalue()
    yield {"virtio": vm, "pl031": PL031, "before": before, "assigner": pa}
    if pa.status()["devices"]:              # test_release_gives_them_back did not run or failed
        pa.release()


def test_vfio_assign_binds_them_into_noiommu_groups(bound):
    host = Host("/")
    for name, drv in ((bound["virtio"], "vfio-platform"), (bound["pl031"], "vfio-amba")):
        n = host.platform_device(name)
        assert n.driver == drv and n.driver_override == drv
        assert n.iommu_group is not None and host.is_noiommu_group(n.iommu_group)
        assert os.path.exists(f"/dev/vfio/noiommu-{n.iommu_group}")
    rec = bound["assigner"].status()["devices"]
    assert rec[bound["virtio"]]["bus"] == "platform" and rec[bound["pl031"]]["bus"] == "amba"
    assert rec[bound["virtio"]]["driver"] is None and rec[bound["virtio"]]["status"] == "assigned"


def test_vfio_inspect_lists_them_with_their_device_tree_nodes(bound):
    rep = {p["name"]: p for p in host_report(Host("/"), ask_kernel=False)["platform_devices"]}
    vm = rep[bound["virtio"]]
    addr = int(bound["virtio"].split(".")[0], 16)
    assert vm["bus"] == "platform" and vm["dt_path"] == f"/virtio_mmio@{addr:x}"
    assert "virtio,mmio" in vm["compatible"] and vm["on_vfio"] and vm["reg"][0]["address"] == addr
    rtc = rep[PL031]
    assert rtc["bus"] == "amba" and rtc["dt_path"] == PL031_NODE and "arm,pl031" in rtc["compatible"]
    assert rtc["driver"] == "vfio-amba" and rtc["reg"][0]["address"] == 0x9010000
    # one device by name: opened through VFIO, with each region's and IRQ's origin
    out = io.StringIO()
    assert inspect_main(["--json", PL031], out=out) == 0
    doc = json.loads(out.getvalue())
    assert doc["kind"] == "platform" and doc["vfio_error"] is None and "amba" in doc["vfio"]["flag_names"]
    assert doc["vfio"]["regions"][0]["dt_origin"] == {"path": PL031_NODE, "property": "reg", "index": 0}
    assert doc["vfio"]["irqs"][0]["dt_origin"] == {"path": PL031_NODE, "property": "interrupts", "index": 0}


def test_virtio_mmio_through_its_noiommu_group(bound):
    name = bound["virtio"]
    node = f"/virtio_mmio@{int(name.split('.')[0], 16):x}"
    with pytest.warns(NoIommuWarning):
        dev = open_platform_device(name)
    with dev:
        assert dev.interface == "noiommu" and dev.dma is None and dev.group.noiommu
        assert dev.info.is_platform and not dev.info.is_pci
        assert (dev.info.num_regions, dev.info.num_irqs) == (1, 1)
        r = dev.region(0)
        assert r.size == 0x200 and r.info.readable and r.info.writable
        assert not r.info.mmappable            # 0x200 is not a whole page: vfio-platform does not mmap it
        assert r.info.offset == 0               # region i at i << 40
        assert r.read32(0x000) == VIRTIO_MAGIC
        assert r.read32(0x004) in (1, 2)        # legacy (QEMU's default force-legacy) or modern
        assert r.read32(0x008) == 0             # no device behind this transport
        assert r.read32(0x00C) == QEMU_VENDOR
        assert dev.region_origin(0) == DtOrigin(node, DtProp.REG, 0)
        assert dev.irq_origin(0) == DtOrigin(node, DtProp.INTERRUPTS, 0)
        q = dev.irq_info(0)
        # edge-triggered: an eventfd, one vector, neither maskable nor automasked
        assert q.eventfd and q.count == 1 and not q.maskable and not q.automasked
        vec = dev.enable_irq(0)
        dev.trigger_irq(0)                      # loopback: vfio-platform's handler signals the eventfd
        assert vec[0].wait(5) == 1
        with pytest.raises(VfioError) as ei:
            dev.unmask_irq(0)                   # vfio_platform_set_irq_unmask: not MASKABLE
        assert ei.value.errno == errno.EINVAL
        dev.disable_irq(0)


def test_pl031_through_vfio_amba_with_a_real_level_interrupt(bound):
    with pytest.warns(NoIommuWarning):
        dev = open_platform_device(PL031, "container")
    with dev:
        assert dev.info.flags & uapi.VFIO_DEVICE_FLAGS_AMBA and not dev.info.is_pci
        assert (dev.info.num_regions, dev.info.num_irqs) == (1, 1)
        r = dev.region(0)
        assert r.size == 0x1000 and r.info.mmappable
        assert tuple(r.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)) == PL031_IDS
        with r.map() as m:
            assert tuple(m.read32(0xFE0 + 4 * i) & 0xFF for i in range(8)) == PL031_IDS
        assert dev.region_origin(0) == DtOrigin(PL031_NODE, DtProp.REG, 0)
        assert dev.irq_origin(0) == DtOrigin(PL031_NODE, DtProp.INTERRUPTS, 0)
        q = dev.irq_info(0)
        assert q.eventfd and q.count == 1 and q.maskable and q.automasked      # level-triggered
        vec = dev.enable_irq(0)
        unmask = dev.unmask_eventfd(0)
        try:
            r.write32(RTCICR, 1)
            r.write32(RTCIMSC, 1)
            t0 = time.monotonic()
            r.write32(RTCMR, r.read32(RTCDR) + 1)           # match in at most a second
            assert vec[0].wait(5) == 1, "no PL031 alarm interrupt within 5 s"
            assert r.read32(RTCRIS) & 1
            # automasked: the line stays masked until unmasked, so a second alarm
            # arrives only after the unmask eventfd is signalled
            r.write32(RTCICR, 1)
            unmask.signal()
            r.write32(RTCMR, r.read32(RTCDR) + 1)
            assert vec[0].wait(5) == 1, "no second alarm after the unmask eventfd"
            assert time.monotonic() - t0 < 10
        finally:
            r.write32(RTCIMSC, 0)
            r.write32(RTCICR, 1)
        dev.disable_irq(0)


@pytest.mark.cdev
def test_no_cdev_for_a_noiommu_platform_device(bound):
    """Linux 6.12 makes no /dev/vfio/devices node for a no-IOMMU device
    (vfio_device_add); the toolkit says so instead of failing on a missing node."""
    for name in (bound["virtio"], PL031):
        n = find_platform_device(name)
        vdev = f"/{n.rel}/vfio-dev"
        # the VFIO device exists (sysfs lists it) but has no character device node
        names = os.listdir(vdev) if os.path.isdir(vdev) else []
        assert not [v for v in names if os.path.exists(f"/dev/vfio/devices/{v}")]
        with pytest.raises(VfioError) as ei:
            open_platform_device(name, "cdev")
        assert ei.value.errno == errno.ENODEV and "no-IOMMU" in str(ei.value)


def test_capture_has_device_tree_records_and_replays(bound, tmp_path):
    name = bound["virtio"]
    node = f"/virtio_mmio@{int(name.split('.')[0], 16):x}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NoIommuWarning)
        with open_platform_device(name) as dev:
            rec = capture_device(dev, bar_bytes=0x100)
            live = dev.region(0).read32(0x004)
    reg = rec.regions[0]
    assert reg.dt_path.path == node and reg.flags & F.REGION_PHYS and reg.addr == int(name.split(".")[0], 16)
    assert [(c.prop_type, c.prop_index) for c in reg.children if type(c) is F.DtIndex] == [(F.DT_PROP_REG, 0)]
    irq = rec.interrupts[0]
    assert [c.path for c in irq.children if type(c) is F.DtPath] == [node]
    assert [(c.prop_type, c.prop_index) for c in irq.children if type(c) is F.DtIndex] == [(F.DT_PROP_INTERRUPTS, 0)]
    path = tmp_path / "virtio-mmio.vfiorec"
    F.save(rec, str(path))
    with open_replay(str(path)) as rdev:
        assert rdev.info.is_platform and rdev.region(0).read32(0) == VIRTIO_MAGIC
        assert rdev.region(0).read32(4) == live
        assert rdev.region_origin(0) == DtOrigin(node, DtProp.REG, 0)
        assert rdev.irq_origin(0) == DtOrigin(node, DtProp.INTERRUPTS, 0)


def test_release_gives_them_back(bound):
    pa = bound["assigner"]
    out = io.StringIO()
    assert assign_main(["release", *sorted(bound["before"]), "--state", pa.state_path], out=out) == 0
    assert out.getvalue().count("released: now on no driver") == 2
    host = Host("/")
    for name, was in bound["before"].items():
        n = host.platform_device(name)
        assert (n.driver, n.driver_override) == was
    assert pa.status()["devices"] == {}
