"""Fixtures for tests that run inside the tools/vfio-harness guest.

The harness boots a QEMU q35 guest (emulated Intel IOMMU with interrupt
remapping, or no IOMMU), binds QEMU's ``edu`` (1234:11e8) and ``nvme``
(1b36:0010) test devices to the real vfio-pci driver, and exports what it did:

    VFIO_HARNESS=1
    VFIO_HARNESS_LEG          stock | container | iommufd-container | custom
    VFIO_HARNESS_IOMMU        intel | virtio | none
    VFIO_HARNESS_NVME_SERIAL  the serial given to QEMU's nvme device
    VFIO_HARNESS_NVME_SRIOV_SERIAL  the serial of the nvme-sriov device's PF
    VFIO_HARNESS_DEVICES / VFIO_HARNESS_BIND   device names present / bound
    VFIO_HARNESS_BDFS         "name=bdf[,bdf] ..." for each harness device found
                              (edu and edu-mf, nvme and nvme-sriov share IDs)

Nothing here skips: a kernel test that runs where its device or guest is
missing fails, naming what is missing, because a silent skip in CI looks like
a pass.  Tests are deselected by marker instead (tests/conftest.py, and the
``-m`` expressions of tools/run-kernel-tests); tests/conftest.py also fails any
kernel-marked test that runs on a system without /dev/vfio.

Tests that use ``nvme_bdf`` are marked ``vfio_nvme`` at collection (by
tests/conftest.py, where every marker is declared), so a leg that leaves nvme
on its own driver (virtio-iommu) deselects them with
``-m "... and not vfio_nvme"`` instead of each test having to say so.

Only sysfs (through vfio.host.sysfs) here: ioctls belong to vfio/uapi.py.
"""

from __future__ import annotations

import os

import pytest

from tests.kernel.kernel_harness import harness_bdfs
from vfio.host.sysfs import Host

EDU_ID = "1234:11e8"
NVME_ID = "1b36:0010"
_RUN_HINT = "run it with tools/run-kernel-tests or tools/vfio-harness"


def _vfio_bdf(name: str, ids: str) -> str:
    mine = harness_bdfs(name)      # edu-mf's functions are edus too, nvme-sriov an nvme
    devs = [d for d in Host("/").find(ids) if mine is None or d.bdf in mine]
    bound = [d.bdf for d in devs if d.driver == "vfio-pci"]
    if not bound:
        pytest.fail(
            f"no {name} device ({ids}) bound to vfio-pci; found {[(d.bdf, d.driver) for d in devs] or 'none'} "
            f"(harness devices={os.environ.get('VFIO_HARNESS_DEVICES', '?')} "
            f"bind={os.environ.get('VFIO_HARNESS_BIND', '?')}); {_RUN_HINT}", pytrace=False)
    return bound[0]


def _harness_env(var: str) -> str:
    value = os.environ.get(var)
    if not value:
        pytest.fail(f"{var} is not set: not inside a tools/vfio-harness guest; {_RUN_HINT}",
                    pytrace=False)
    return value


@pytest.fixture(scope="session")
def edu_bdf() -> str:
    """BDF (e.g. ``0000:00:04.0``) of QEMU's edu device, bound to vfio-pci."""
    return _vfio_bdf("edu", EDU_ID)


@pytest.fixture(scope="session")
def nvme_bdf() -> str:
    """BDF of QEMU's nvme device, bound to vfio-pci."""
    return _vfio_bdf("nvme", NVME_ID)


@pytest.fixture(scope="session")
def nvme_serial() -> str:
    """The serial number the harness gave QEMU's nvme device (Identify reports it)."""
    return _harness_env("VFIO_HARNESS_NVME_SERIAL")


@pytest.fixture(scope="session")
def harness_kernel() -> str:
    """Which kernel this guest runs: ``stock``, ``container``, ``iommufd-container`` (or ``custom``)."""
    return _harness_env("VFIO_HARNESS_LEG")


@pytest.fixture(scope="session")
def harness_iommu() -> str:
    """``intel`` (emulated VT-d with interrupt remapping), ``virtio`` (virtio-iommu-pci,
    no interrupt remapping) or ``none`` (no-IOMMU mode)."""
    return _harness_env("VFIO_HARNESS_IOMMU")
