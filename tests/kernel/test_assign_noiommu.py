"""vfio-assign in no-IOMMU mode (built kernel, vfio.enable_unsafe_noiommu_mode=1,
the noiommu leg): a device on vfio-pci sits in a made-up ``vfio-noiommu``
group that QEMU's vfio-pci cannot use, so no QEMU or libvirt snippet is
printed -- the output says why instead -- and the host is not taken for one
with an IOMMU."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from vfio.host.sysfs import Host

pytestmark = pytest.mark.noiommu


def test_no_qemu_snippet_for_a_noiommu_group(edu_bdf, tmp_path):
    host = Host("/")
    g = host.device(edu_bdf).iommu_group
    assert g is not None and host.is_noiommu_group(g) and not host.has_iommu
    run = lambda *a: subprocess.run([sys.executable, "-m", "vfio.host.assign_cli", "bind", edu_bdf,
                                     "--state", str(tmp_path / "state.json"), *a],
                                    capture_output=True, text=True, timeout=300)
    r = run()
    assert r.returncode == 0, r.stderr
    assert "vfio-pci,host=" not in r.stdout and "<hostdev" not in r.stdout
    assert f"{edu_bdf}: no QEMU or libvirt snippet: IOMMU group {g} is a no-IOMMU group (/dev/vfio/noiommu-{g})" in r.stdout
    r = run("--json")
    doc = json.loads(r.stdout)
    assert doc["qemu_args"] == [] and doc["libvirt_hostdev"] == []
    assert [x["bdf"] for x in doc["not_for_qemu"]] == [edu_bdf]
