"""Test-suite wide policy for tests that need the real kernel.

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

#: Markers of tests that need the real kernel (see pyproject's marker list).
KERNEL_MARKERS = ("kernel", "cdev", "noiommu", "iommufd_container", "native_drivers", "virtio_iommu")


def in_harness_guest() -> bool:
    """True when running inside a guest booted by tools/vfio-harness."""
    return os.environ.get("VFIO_HARNESS") == "1"


def needs_kernel(item: pytest.Item) -> bool:
    return any(item.get_closest_marker(m) is not None for m in KERNEL_MARKERS)


_deselected_key = pytest.StashKey[int]()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
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
