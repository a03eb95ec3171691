"""Test-suite wide policy for tests that need the real kernel, and the one
place the suite's markers are declared (:data:`MARKERS`, registered with pytest
here; pyproject.toml lists none) and given (:data:`FIXTURE_MARKERS`).  Paths
to the repository's parts are in tests/paths.py.

Tests marked ``kernel``, ``cdev``, ``noiommu``, ``iommufd_container``,
``native_drivers`` or ``virtio_iommu`` need the real vfio-pci driver and only pass inside the QEMU guest that
``tools/vfio-harness`` boots (``tools/run-kernel-tests`` runs them as a matrix
of kernels).  On a plain host a developer's ``pytest`` must still be clean and
honest, so here they are *deselected* -- not skipped: a skip would be counted
and reported as if something had been checked.

Rules:
- inside the harness guest (``VFIO_HARNESS=1``, set by tools/vfio-harness):
  nothing is deselected here; the leg's ``-m`` expression decides.
- on a host with an explicit ``-m`` expression: the user decides.  A kernel test
  selected that way on a system without /dev/vfio fails with a message saying
  how to run it (pytest_runtest_setup below), instead of erroring obscurely.
- on a host without ``-m``: kernel-only tests are deselected and the terminal
  summary says how many and how to run them.
"""

from __future__ import annotations

import os

import pytest

#: Every marker the suite uses, the one place they are declared (registered with
#: pytest in :func:`pytest_configure`): name -> (meaning, whether a test carrying it
#: needs the real kernel).  tools/run-kernel-tests's legs select by these names.
MARKERS = {
    "kernel": ("needs the real vfio-pci driver (runs inside the QEMU guest harness, tools/vfio-harness)", True),
    "cdev": ("needs the iommufd VFIO cdev path (built kernel only)", True),
    "noiommu": ("needs a no-IOMMU group (built kernel with vfio.enable_unsafe_noiommu_mode=1)", True),
    "iommufd_container": ("needs the legacy container API served by iommufd (IOMMUFD_VFIO_CONTAINER kernel)", True),
    "native_drivers": ("needs nvme/e1000e started on their own guest drivers (the host-tools leg)", True),
    "virtio_iommu": ("needs a guest whose IOMMU is virtio-iommu-pci (the virtio-iommu leg: edu on vfio-pci, "
                     "nvme/e1000e on their own drivers)", True),
    "vfio_nvme": ("uses the nvme_bdf fixture, so needs nvme bound to vfio-pci; given automatically "
                  "(FIXTURE_MARKERS in tests/conftest.py)", False),
    "qemu_trace": ("reads QEMU's memory trace of the guest's own accesses (the memwidth leg: "
                   "--qemu-trace 'memory_region_ops_*', edu and virtio-rng on vfio-pci)", True),
    "x86_bus": ("touches a device in a way QEMU refuses with a bus error (edu's 1- and 2-byte "
                "accesses): an x86 guest reads ones or zeros and goes on, an arm64 guest takes a "
                "synchronous external abort in the kernel (an oops), so the arm64 leg deselects it", False),
    "mdev": ("needs mediated devices: the mdev framework and the kernel's sample parents mtty/mdpy "
             "(built x86 kernels only: the container and iommufd-container legs)", True),
    "platform": ("opens device-tree devices (virtio-mmio, PL031) through vfio-platform/vfio-amba (the "
                 "arm64-platform leg: QEMU virt in no-IOMMU mode, where platform devices get noiommu groups)", True),
    "whole_session": ("records and replays a whole program's session with a device through subprocesses "
                      "(about a minute under TCG): the stock leg runs it, the other legs deselect it", False),
    "arm64": ("describes the arm64 guest (the arm64 leg: tools/vfio-harness --arch arm64, QEMU virt "
              "with SMMUv3); x86 legs deselect it", True),
}

#: Markers of tests that need the real kernel.
KERNEL_MARKERS = tuple(name for name, (_, kernel) in MARKERS.items() if kernel)


def pytest_configure(config: pytest.Config) -> None:
    for name, (meaning, _) in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {meaning}")


def in_harness_guest() -> bool:
    """True when running inside a guest booted by tools/vfio-harness."""
    return os.environ.get("VFIO_HARNESS") == "1"


def needs_kernel(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in KERNEL_MARKERS)


_deselected_key = pytest.StashKey[int]()


#: Markers given at collection to every test that uses a fixture: fixture -> marker.
#: ``nvme_bdf`` (tests/kernel/conftest.py) needs nvme on vfio-pci, so a leg that leaves
#: nvme on its own driver deselects those tests with ``-m "... and not vfio_nvme"``.
FIXTURE_MARKERS = {"nvme_bdf": "vfio_nvme"}


@pytest.hookimpl(tryfirst=True)   # the markers are given before -m deselects on them
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        for fixture, marker in FIXTURE_MARKERS.items():
            if fixture in getattr(item, "fixturenames", ()):
                item.add_marker(marker)
    if in_harness_guest() or config.getoption("markexpr"):
        return
    keep, drop = [], []
    for item in items:
        (drop if needs_kernel(item) else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    config.stash[_deselected_key] = len(drop)


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    n = config.stash.get(_deselected_key, 0)
    if n:
        terminalreporter.write_line(
            f"vfio: {n} real-kernel test(s) deselected on this host; "
            "run them in QEMU guests with tools/run-kernel-tests")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if needs_kernel(item) and not os.path.isdir("/dev/vfio"):
        pytest.fail(
            f"{item.nodeid} needs the real vfio-pci driver but this system has no /dev/vfio; "
            "run it with tools/run-kernel-tests or tools/vfio-harness "
            "(or deselect it with -m 'not kernel')", pytrace=False)
