"""A tree tools/capture-sysfs takes of the live guest answers the fd layer's and
capture's sysfs questions as the live system does (vfio.sysfs.SysfsTree)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import TOOLS
from vfio.group import group_path_of, iommu_group_of
from vfio.iommufd import cdev_path_of
from vfio.record import format as F
from vfio.record.capture import capture_sysfs
from vfio.sysfs import SysfsTree

pytestmark = pytest.mark.kernel


@pytest.fixture(scope="module")
def captured(tmp_path_factory) -> SysfsTree:
    out = tmp_path_factory.mktemp("sysdoor") / "tree"
    r = subprocess.run([sys.executable, os.path.join(TOOLS, "capture-sysfs"), str(out)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return SysfsTree(str(out))


def _records(rec: F.DeviceRecord) -> list:
    return [r for r in rec.records if type(r) is not F.Note]       # NOTE: a timestamp


def test_group_of_edu_from_the_captured_tree(edu_bdf, captured):
    assert iommu_group_of(edu_bdf, captured) == iommu_group_of(edu_bdf)
    live = group_path_of(edu_bdf)
    assert group_path_of(edu_bdf, captured) == captured.dev(os.path.join("vfio", os.path.basename(live)))


def test_capture_from_the_captured_tree_is_the_live_capture(edu_bdf, captured):
    live = capture_sysfs(edu_bdf)
    assert _records(capture_sysfs(edu_bdf, sysfs=captured)) == _records(live)
    assert live.regions[0].size and live.regions[7].size >= 256


@pytest.mark.cdev
def test_cdev_of_edu_from_the_captured_tree(edu_bdf, captured):
    live = cdev_path_of(edu_bdf)
    assert live.startswith("/dev/vfio/devices/vfio") and os.path.exists(live)
    assert cdev_path_of(edu_bdf, captured) == captured.dev(os.path.join("vfio", "devices", os.path.basename(live)))
