"""tools/run-kernel-tests's arm64 leg: what it selects, which kernel it builds, how it
starts the guest (no guest booted here)."""

from __future__ import annotations

import subprocess
from types import SimpleNamespace

import pytest

from tests.conftest import KERNEL_MARKERS, MARKERS
from tests.unit.test_tools_harness import _legs_selecting, _load_run_kernel_tests


@pytest.fixture(scope="module")
def rkt():
    return _load_run_kernel_tests()


def _leg(rkt, name):
    return {x.name: x for x in rkt.LEGS}[name]


def test_arm64_marker_is_declared_as_a_kernel_marker():
    assert "arm64" in MARKERS and "arm64" in KERNEL_MARKERS


def test_arm64_guest_tests_run_on_the_arm64_leg_alone():
    # deselected (not skipped) everywhere else
    assert _legs_selecting({"kernel", "arm64"}, "test_arm64_guest") == ["arm64"]


def test_arm64_leg_runs_the_container_legs_tests(rkt):
    leg = _leg(rkt, "arm64")
    assert (leg.kernel, leg.iommu, leg.arch, leg.build) == ("container", "smmuv3", "arm64", "arm64")
    # the container leg's tests but for those whose refused accesses abort an arm64 kernel,
    # and the mdev ones (mtty/mdpy are built into the x86 kernels only)
    assert leg.markexpr.replace(" and not mdev", "") == _leg(rkt, "container").markexpr.replace(
        " and not arm64", "").replace("iommufd_container", "iommufd_container and not x86_bus", 1)
    assert "arm64" not in _legs_selecting({"kernel", "mdev"})
    for marks in ({"kernel"}, {"kernel", "cdev"}, {"kernel", "vfio_nvme"}):
        assert "arm64" in _legs_selecting(marks)
    for marks in ({"kernel", "noiommu"}, {"kernel", "iommufd_container"}, {"kernel", "native_drivers"},
                  {"kernel", "virtio_iommu"}, {"qemu_trace"}):
        assert "arm64" not in _legs_selecting(marks)


def _built(rkt, monkeypatch, names):
    calls = []

    def fake_run(cmd, **kw):
        calls.append(cmd[1])
        return SimpleNamespace(returncode=0, stdout="IMAGE\n")
    monkeypatch.setattr(rkt.subprocess, "run", fake_run)
    assert rkt.build_kernels([_leg(rkt, n) for n in names])
    return calls


def test_build_kernels_builds_what_the_selected_legs_boot(rkt, monkeypatch):
    # the arm64 leg's variant name is "container", but it boots the arm64 kernel only
    assert _built(rkt, monkeypatch, ["arm64"]) == ["arm64"]
    assert _built(rkt, monkeypatch, ["stock", "host-tools"]) == []
    assert _built(rkt, monkeypatch, ["container", "noiommu", "arm64"]) == ["arm64", "container"]


def test_arm64_leg_starts_guest_python_not_the_hosts(rkt, monkeypatch, tmp_path):
    seen = []

    class FakePopen:
        def __init__(self, cmd, **kw):
            seen.append(cmd)
            self.stderr = iter(())

        def wait(self):
            return rkt.HARNESS_NO_STATUS
    monkeypatch.setattr(rkt.subprocess, "Popen", FakePopen)
    args = SimpleNamespace(junit_dir=str(tmp_path), timeout=60, verbose=False, pytest_args=[], fail_on_empty=False)
    for name in ("arm64", "container"):
        rkt.run_leg(_leg(rkt, name), args)
    arm, x86 = seen
    assert "--python" not in arm and arm[arm.index("--arch") + 1] == "arm64"
    assert arm[arm.index("--") + 1] == "python3"
    assert "--arch" not in x86 and x86[x86.index("--python") + 1] == x86[x86.index("--") + 1]


def test_list_shows_the_arm64_leg():
    r = subprocess.run(["python3", "tools/run-kernel-tests", "--list", "--leg", "arm64"],
                       capture_output=True, text=True, cwd=_load_run_kernel_tests().ROOT)
    assert r.returncode == 0 and r.stdout.startswith("arm64 ") and "--arch arm64" in r.stdout
