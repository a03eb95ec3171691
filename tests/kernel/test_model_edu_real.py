"""The real edu (QEMU's, bound to vfio-pci in the guest) against the behaviour
tests vfio.models.edu.EduModel passes on the host (tests/common_edu_behaviour.py),
plus the one documented difference: a DMA to an IOVA nothing is mapped at."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

import vfio
from tests.common_edu_behaviour import *  # noqa: F401,F403  (the shared tests)
from tests.common_edu_behaviour import DMA_BUF, DMA_LIMIT, dma, unmapped_iova
from tests.paths import EXAMPLES

pytestmark = pytest.mark.kernel


@pytest.fixture
def edu_dev(edu_bdf):
    with vfio.open_pci_device(edu_bdf) as dev:
        dev.enable_bus_master()
        yield dev


def test_dma_from_an_unmapped_iova_completes_and_moves_nothing(edu_dev):
    """The IOMMU faults the access (QEMU's intel-iommu logs a DMAR fault); the
    transfer completes, a faulted read leaves edu's buffer as it was and a
    faulted write goes nowhere.
    The model raises vfio.model.DmaFault instead (tests/unit/test_model_edu.py)."""
    bar = edu_dev.region(0)
    iova = unmapped_iova(edu_dev)
    with edu_dev.dma.alloc(0x2000, limit=DMA_LIMIT) as m:
        m.write(0, b"\xAA" * 64)
        dma(bar, m.iova, DMA_BUF, 64)                        # the buffer holds 0xAA...
        dma(bar, iova, DMA_BUF, 64)                          # faulted read: completes
        dma(bar, DMA_BUF, m.iova + 0x1000, 64, to_ram=True)
        assert m.read(0x1000, 64) == b"\xAA" * 64            # the buffer kept what it had
        dma(bar, DMA_BUF, iova, 64, to_ram=True)             # faulted write: completes
        m.write(0, b"\x55" * 64)                             # and the device still works
        dma(bar, m.iova, DMA_BUF, 64)
        dma(bar, DMA_BUF, m.iova + 0x1000, 64, to_ram=True)
        assert m.read(0x1000, 64) == b"\x55" * 64


def test_example_driver_prints_the_same_on_the_model(edu_bdf):
    script = os.path.join(EXAMPLES, "edu_driver.py")
    args = ["--factorial", "12", "--dma-bytes", "4095"]
    real = subprocess.run([sys.executable, script, edu_bdf, *args], capture_output=True, text=True, timeout=300)
    model = subprocess.run([sys.executable, script, "--model", *args], capture_output=True, text=True, timeout=300)
    assert real.returncode == 0 and model.returncode == 0, (real.stderr, model.stderr)
    assert real.stdout == model.stdout == "liveness: 0xedcba987\nfactorial(12): 479001600\ndma: ok (4095 bytes)\n"
