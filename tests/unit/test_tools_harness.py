"""Host-side pieces of the test harness: junit counting and the marker policy.

tools/junit_summary.py produces the numbers of the `kernel-matrix:` and `total:`
lines CI reports, and tests/conftest.py decides whether real-kernel tests are
deselected on a host or fail loudly; both must be right for the counts to be
honest.  The policy is exercised by running pytest on a scratch directory that
holds a copy of tests/conftest.py.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys

import pytest

from tests.paths import REPO as ROOT


def _load_junit_summary():
    spec = importlib.util.spec_from_file_location("junit_summary", os.path.join(ROOT, "tools", "junit_summary.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod      # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


js = _load_junit_summary()

JUNIT = """<?xml version="1.0" encoding="utf-8"?>
<testsuites><testsuite name="a" errors="1" failures="2" skipped="3" tests="10"/>
<testsuite name="b" errors="0" failures="0" skipped="0" tests="4"/></testsuites>"""


def test_counts_sum_suites_and_treat_errors_as_failures(tmp_path):
    f = tmp_path / "j.xml"
    f.write_text(JUNIT)
    c = js.count_junit(str(f))
    assert (c.passed, c.failed, c.skipped) == (4 + 4, 3, 3)
    assert c.line("total") == "total: 8 passed, 3 failed, 3 skipped"
    assert js.Counts(1, 0, 0).line("kernel-matrix") == "kernel-matrix: 1 passed, 0 failed"


def test_bad_junit_is_an_error_naming_the_file(tmp_path):
    f = tmp_path / "broken.xml"
    f.write_text("<testsuites><testsuite tests='x'")
    with pytest.raises(ValueError, match="broken.xml"):
        js.count_junit(str(f))
    with pytest.raises(ValueError, match="missing.xml"):
        js.count_junit(str(tmp_path / "missing.xml"))


def test_cli_adds_extra_failures(tmp_path):
    f = tmp_path / "j.xml"
    f.write_text(JUNIT)
    r = subprocess.run([sys.executable, os.path.join(ROOT, "tools", "junit_summary.py"),
                        "--label", "unit", "--extra-failed", "2", str(f)], capture_output=True, text=True)
    assert r.returncode == 0
    assert r.stdout.strip() == "unit: 8 passed, 5 failed, 3 skipped"


SAMPLE = """
import pytest

def test_plain():
    assert True

@pytest.mark.kernel
def test_needs_kernel():
    assert True

@pytest.mark.cdev
def test_needs_cdev():
    assert True
"""


def _run_policy(tmp_path, *args, env_extra=None):
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    kernel: k\n    cdev: c\n"
                                         "    noiommu: n\n    iommufd_container: i\n")
    env = {k: v for k, v in os.environ.items() if k != "VFIO_HARNESS"}
    env.update(env_extra or {})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:benchmark",
                           "-q", str(tmp_path), *args],
                          capture_output=True, text=True, cwd=tmp_path, env=env)


@pytest.mark.skipif(os.path.isdir("/dev/vfio"), reason="policy differs on a system with /dev/vfio")
def test_host_without_m_deselects_kernel_tests(tmp_path):
    r = _run_policy(tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 2 deselected" in r.stdout
    assert "2 real-kernel test(s) deselected" in r.stdout


@pytest.mark.skipif(os.path.isdir("/dev/vfio"), reason="policy differs on a system with /dev/vfio")
def test_host_with_m_kernel_fails_loudly(tmp_path):
    r = _run_policy(tmp_path, "-m", "kernel")
    assert r.returncode == 1, r.stdout + r.stderr
    assert "needs the real vfio-pci driver but this system has no /dev/vfio" in r.stdout


@pytest.mark.skipif(os.path.isdir("/dev/vfio"), reason="policy differs on a system with /dev/vfio")
def test_inside_harness_nothing_is_deselected_by_the_policy(tmp_path):
    r = _run_policy(tmp_path, env_extra={"VFIO_HARNESS": "1"})
    # in a (pretend) guest the policy deselects nothing; without /dev/vfio they then fail
    assert "deselected" not in r.stdout
    assert "2 errors" in r.stdout or "2 error" in r.stdout, r.stdout


def test_policy_deselects_virtio_iommu_tests_on_the_host(tmp_path):
    # a test marked only virtio_iommu needs a virtio-iommu guest: never run on a host without -m
    shutil.copy(os.path.join(ROOT, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_v.py").write_text(
        "import pytest\n\n@pytest.mark.virtio_iommu\ndef test_v():\n    assert True\n\ndef test_plain():\n    pass\n")
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    virtio_iommu: v\n")
    env = {k: v for k, v in os.environ.items() if k != "VFIO_HARNESS"}
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:benchmark",
                        "-q", str(tmp_path)], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "1 passed, 1 deselected" in r.stdout


def _load_run_kernel_tests():
    from importlib.machinery import SourceFileLoader
    loader = SourceFileLoader("run_kernel_tests", os.path.join(ROOT, "tools", "run-kernel-tests"))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    loader.exec_module(mod)
    return mod


def _legs_selecting(marks: set[str], module: str = "test_fd_layer") -> list[str]:
    """Names of the matrix legs whose -m (and -k) would run a test with these markers."""
    from _pytest.mark.expression import Expression   # pytest's own -m/-k evaluator
    rkt = _load_run_kernel_tests()
    out = []
    for leg in rkt.LEGS:
        if not Expression.compile(leg.markexpr).evaluate(lambda name: name in marks):
            continue
        names = marks | {module}
        if leg.keyexpr and not Expression.compile(leg.keyexpr).evaluate(
                lambda sub: any(sub.lower() in n.lower() for n in names)):
            continue
        out.append(leg.name)
    return out


def test_virtio_iommu_leg_runs_virtio_tests_and_the_edu_iommu_tests():
    rkt = _load_run_kernel_tests()
    leg = {x.name: x for x in rkt.LEGS}["virtio-iommu"]
    assert (leg.kernel, leg.iommu, leg.bind) == ("stock", "virtio", "edu")
    assert {"nvme", "e1000e"} <= set(leg.devices.split(","))      # on their own drivers
    assert _legs_selecting({"kernel", "virtio_iommu"}, "test_assign_x") == ["virtio-iommu"]
    assert _legs_selecting({"kernel", "native_drivers", "virtio_iommu"}, "test_x") == ["virtio-iommu"]
    # an edu test of the fd layer runs on every IOMMU leg, virtio-iommu (and arm64's SMMUv3) included
    assert _legs_selecting({"kernel"}) == ["stock", "container", "iommufd-container", "virtio-iommu", "arm64"]
    # ... but not if it needs nvme on vfio-pci, nor IOMMU-agnostic modules
    assert "virtio-iommu" not in _legs_selecting({"kernel", "vfio_nvme"})
    assert "virtio-iommu" not in _legs_selecting({"kernel"}, "test_api_docs")


def test_host_tools_leg_has_the_extra_devices_unbound():
    rkt = _load_run_kernel_tests()
    leg = {x.name: x for x in rkt.LEGS}["host-tools"]
    assert {"piix3-ide", "nvme-sriov", "edu-mf"} <= set(leg.devices.split(",")) and leg.bind == "edu"
    assert _legs_selecting({"kernel", "native_drivers"}, "test_harness_devices") == ["host-tools"]


def test_harness_knows_its_device_names():
    r = subprocess.run([os.path.join(ROOT, "tools", "vfio-harness"), "--devices", "edu,bogus", "--", "true"],
                       capture_output=True, text=True)
    assert r.returncode == 2
    assert "unknown device 'bogus'" in r.stderr
    for name in ("edu", "nvme", "e1000e", "pci-testdev", "piix3-ide", "nvme-sriov", "edu-mf"):
        assert name in r.stderr.split("known:")[1], r.stderr
