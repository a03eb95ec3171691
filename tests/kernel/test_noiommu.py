"""No-IOMMU mode against the real kernel (built kernel, vfio.enable_unsafe_noiommu_mode=1).

The toolkit must make the danger plain (NoIommuWarning, ``interface ==
"noiommu"``) and refuse DMA mapping calls, which make no sense without an
IOMMU; device access (regions, interrupts) still works.
"""

from __future__ import annotations

import pytest

import vfio
from vfio import uapi
from vfio.errors import UnsafeOperationError

from tests.kernel import kernel_edu as edu_dev

pytestmark = pytest.mark.noiommu


def test_noiommu_groups_and_no_cdevs(edu_bdf):
    ifs = vfio.available_interfaces()
    assert ifs["noiommu_groups"] and not ifs["groups"]
    assert ifs["container"]
    assert vfio.group_path_of(edu_bdf).startswith("/dev/vfio/noiommu-")


def test_open_warns_and_refuses_dma(edu_bdf):
    with pytest.warns(vfio.NoIommuWarning, match="DMA anywhere"):
        dev = vfio.open_pci_device(edu_bdf)
    with dev:
        assert dev.interface == "noiommu" and dev.dma is None
        assert dev.container.noiommu and dev.group.noiommu
        assert dev.container.check_extension(uapi.VFIO_NOIOMMU_IOMMU) == 1
        buf = vfio.DmaBuffer(0x1000)
        try:
            with pytest.raises(UnsafeOperationError, match="no-IOMMU"):
                dev.container.map(buf)
            with pytest.raises(UnsafeOperationError):
                dev.container.map_dma(buf.vaddr, 0x100000, 0x1000)
            with pytest.raises(UnsafeOperationError):
                dev.container.iommu_info()
        finally:
            buf.close()
        # device access itself works: registers and an interrupt
        with dev.region(0).map() as bar:
            assert bar.read32(0) == edu_dev.ID
            edu_dev.bus_master(dev)
            vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
            bar.write32(0x60, 0x8)
            assert vec[0].wait(10) >= 1
            bar.write32(0x64, bar.read32(0x24))
