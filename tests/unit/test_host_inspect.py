"""vfio-inspect on captured trees (fixtures/sysfs/) and on a record file:
the JSON document of docs/vfio-inspect-json.md, the text, the exit codes."""

from __future__ import annotations

import io
import json
import os

import pytest

from vfio.host import inspect
from vfio.host.sysfs import Host
from vfio.host.viability import predict

from tests.paths import SYSFS_TREES as FIXTURES
GUEST = os.path.join(FIXTURES, "q35-guest")
VIRTIO = os.path.join(FIXTURES, "host-virtio")


def run(*argv) -> tuple[int, str]:
    out = io.StringIO()
    rc = inspect.main(list(argv), out=out)
    return rc, out.getvalue()


def test_host_json_document():
    rc, text = run("--root", GUEST, "--json")
    assert rc == inspect.EXIT_OK
    doc = json.loads(text)
    assert doc["schema"] == "vfio-inspect/1" and doc["kind"] == "host" and doc["iommu"] is True
    assert doc["interfaces"] == {"container": True, "cdev": False, "noiommu_groups": [],
                                 "groups_with_nodes": ["3"], "noiommu_mode": None}
    groups = {g["group"]: g for g in doc["groups"]}
    assert groups["8"]["devices"] == ["0000:00:1f.0", "0000:00:1f.2", "0000:00:1f.3"]
    assert groups["8"]["viable"] is False and "0000:00:1f.2 is bound to ahci" in groups["8"]["why_not_viable"]
    assert groups["3"]["viable"] is True and groups["3"]["viability_source"] == "sysfs"
    devs = {d["bdf"]: d for d in doc["devices"]}
    nvme = devs["0000:00:04.0"]
    assert (nvme["vendor_id"], nvme["device_id"], nvme["class_code"]) == (0x1B36, 0x0010, 0x010802)
    assert nvme["driver"] == "nvme" and nvme["iommu_group"] == "4" and nvme["block_devices"] == ["nvme0n1"]
    assert nvme["in_use"] == [{"kind": "mounted", "what": "/dev/nvme0n1",
                               "detail": "0000:00:04.0: /dev/nvme0n1 is mounted on /mnt/nv"}]
    assert devs["0000:01:00.0"]["parent"] == "0000:00:05.0"
    assert devs["0000:01:00.0"]["net_interfaces"] == ["eth0"] and devs["0000:00:05.0"]["net_interfaces"] == []


def test_host_text_lists_groups_and_reasons():
    rc, text = run("--root", GUEST)
    assert rc == 0
    assert "legacy container  /dev/vfio/vfio:                yes" in text
    assert "\nIOMMU group 9 [identity]: not viable: 0000:01:00.0 is bound to e1000e" in text
    line = [ln for ln in text.splitlines() if ln.startswith("  0000:00:04.0 ")]
    assert len(line) == 1
    # names depend on the installed pci.ids; the numbers never do
    assert "[0108]" in line[0] and "[1b36:0010] (rev 02)" in line[0] and "driver: nvme" in line[0]
    assert "IN USE: /dev/nvme0n1 is mounted on /mnt/nv" in line[0]
    assert "IOMMU: none" not in text


def test_no_iommu_is_said_plainly():
    rc, text = run("--root", VIRTIO)
    assert rc == 0
    assert "IOMMU: none -- the kernel made no IOMMU groups" in text
    assert "Devices without an IOMMU group:" in text
    assert "IN USE: holds the root filesystem (/dev/vda mounted on /)" in text
    doc = json.loads(run("--root", VIRTIO, "--json")[1])
    assert doc["iommu"] is False and doc["groups"] == []
    assert all(d["viable"] is False and "no IOMMU group" in d["why_not_viable"] for d in doc["devices"])


def test_device_detail_decodes_config_space():
    rc, text = run("--root", GUEST, "--json", "0000:00:04.0")
    assert rc == 0
    d = json.loads(text)
    assert d["kind"] == "device" and d["bdf"] == "0000:00:04.0"
    cfg = d["config"]
    assert cfg["length"] == 4096 and cfg["vendor_id"] == 0x1B36
    assert [c["name"] for c in cfg["capabilities"]] == ["MSI-X", "PCI Express", "Power Management"]
    assert cfg["bars"][0]["size"] == 0x4000          # from sysfs resource
    # on nvme, not vfio-pci: nothing to open
    assert d["vfio"] is None and d["vfio_error"] is None


def test_vfio_bound_device_in_a_captured_tree_says_why_it_is_not_opened():
    rc, text = run("--root", GUEST, "1234:11e8")
    assert rc == 0
    assert "VFIO: cannot open: captured tree" in text
    assert "driver: vfio-pci (override: vfio-pci)" in text


def test_several_targets_make_a_list():
    doc = json.loads(run("--root", GUEST, "--json", "00:04.0", "1af4:1009")[1])
    assert doc["kind"] == "list" and [i["bdf"] for i in doc["items"]] == [
        "0000:00:04.0", "0000:00:01.0", "0000:00:02.0"]


@pytest.mark.parametrize("arg", ["00:09.0", "nonsense", "some/missing/file.rec"])
def test_bad_targets_exit_2(arg, capsys):
    rc, _ = run("--root", GUEST, arg)
    assert rc == inspect.EXIT_USAGE
    assert "vfio-inspect: " in capsys.readouterr().err


def test_corrupt_config_is_shown_in_place_with_exit_3(tmp_path):
    import shutil
    root = tmp_path / "root"
    shutil.copytree(GUEST, root, symlinks=True)
    cfg = root / "sys/devices/pci0000:00/0000:00:04.0/config"
    data = bytearray(cfg.read_bytes())
    data[0x34] = 0x41                 # capability pointer, not dword aligned
    cfg.write_bytes(bytes(data))
    rc, text = run("--root", str(root), "00:04.0")
    assert rc == inspect.EXIT_PARTIAL
    assert "Capabilities: list corrupt:" in text and "0x41" in text


def test_record_file(tmp_path):
    from vfio.record import save
    from vfio.record.capture import capture_sysfs
    path = str(tmp_path / "e1000e.rec")
    save(capture_sysfs("0000:01:00.0", sysfs=os.path.join(GUEST, "sys/bus/pci/devices")), path)
    rc, text = run("--json", path)
    assert rc == 0
    doc = json.loads(text)
    assert doc["kind"] == "record" and doc["config"]["device_id"] == 0x10D3
    v = doc["vfio"]
    assert v["interface"] == "replay" and v["num_regions"] == 9 and v["num_irqs"] == 5
    bar3 = v["regions"][3]
    assert bar3["size"] == 0x4000 and "mmap" in bar3["flag_names"]
    assert [c["type"] for c in bar3["caps"]] == ["MsixMappableCap"]
    assert v["irqs"][2] == {"index": 2, "name": "MSI-X", "count": 5, "flags": 9, "flag_names": ["eventfd", "noresize"]}
    rc, text = run(path)
    assert "VFIO (opened through: replay)" in text and "irq 2 MSI-X: count 5" in text


def test_not_a_record_file_exits_2(tmp_path, capsys):
    p = tmp_path / "junk.rec"
    p.write_bytes(b"not a record file at all")
    rc, _ = run(str(p))
    assert rc == inspect.EXIT_USAGE
    assert "junk.rec" in capsys.readouterr().err


def test_names_are_used_when_the_database_answers(monkeypatch):
    class FakeDb:
        def vendor_name(self, v):
            return {0x1B36: "Red Hat, Inc."}.get(v)

        def device_name(self, v, d):
            return {(0x1B36, 0x0010): "QEMU NVM Express Controller"}.get((v, d))

        def class_name(self, c):
            return {0x010802: "Non-Volatile memory controller"}.get(c)

    names = inspect.Names()
    names.db = FakeDb()
    h = Host(GUEST)
    viab = {g.number: predict(g) for g in h.groups()}
    d = inspect.device_summary(h, h.device("00:04.0"), names, viab)
    assert d["vendor_name"] == "Red Hat, Inc." and d["device_name"] == "QEMU NVM Express Controller"
    assert inspect._ident(d) == ("Non-Volatile memory controller [0108]: Red Hat, Inc. QEMU NVM Express "
                                 "Controller [1b36:0010] (rev 02)")
    e = inspect.device_summary(h, h.device("01:00.0"), names, viab)
    assert e["vendor_name"] is None and "[8086:10d3]" in inspect._ident(e)
