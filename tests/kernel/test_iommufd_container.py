"""The legacy container API served by iommufd (CONFIG_IOMMUFD_VFIO_CONTAINER).

The same container code as on the native type1 container; iommufd's emulation
offers the no-IOMMU type and reports no limit on the number of DMA mappings
(DMA_AVAIL = U32_MAX), where type1 counts them down from its dma_entry_limit.
"""

from __future__ import annotations

import pytest

import vfio
from vfio import uapi

from tests.kernel import kernel_edu as edu_dev

pytestmark = [pytest.mark.kernel, pytest.mark.iommufd_container]


def test_iommufd_backed_container_dma(edu_bdf):
    with vfio.open_pci_device(edu_bdf, interface="container") as dev:
        c = dev.container
        assert c.iommu_type == uapi.VFIO_TYPE1v2_IOMMU
        info = c.iommu_info()
        assert info.iova_pgsizes & 0x1000
        assert info.dma_avail == 0xFFFFFFFF
        assert c.check_extension(uapi.VFIO_NOIOMMU_IOMMU) == 1
        edu_dev.bus_master(dev)
        m = c.alloc(0x2000, limit=edu_dev.DMA_MASK)
        with dev.region(0).map() as bar:
            assert edu_dev.round_trip(bar, m)
        # iommufd's compat unmap of nothing succeeds with 0 bytes, like type1
        assert c.unmap_dma(0x7000000, 0x1000) == 0
        assert m.unmap() == 0x2000
