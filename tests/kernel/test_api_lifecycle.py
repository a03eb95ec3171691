"""The public device API against the real kernel: what a user of the README does.

Facts pinned down here: leaving ``open_pci_device``'s block with DMA memory
still mapped closes cleanly (the mappings are unmapped while the type1 IOMMU
context exists, before the group leaves the container, which drops it); a
caller's container survives its devices, loses its mappings and IOMMU model
with its last group, and can take a group again; ``DmaMapping`` reads and
writes what the device DMAs; the Bus Master bit is off after open and the
public API turns it on; an IRQ index without vectors is refused with a clear
error before any SET_IRQS.
"""

from __future__ import annotations

import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.errors import RegionAccessError, VfioError
from vfio.pci import regs as R

from tests.kernel import kernel_edu as edu_dev

pytestmark = pytest.mark.kernel


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


def _edu_dma_round_trip(dev, mapping, n: int = 1024) -> bool:
    with dev.region(0).map() as bar:
        pattern = bytes((i * 13 + 5) & 0xFF for i in range(n))
        mapping.write(0, pattern)
        mapping.write(0x1000, bytes(n))
        edu_dev.dma(bar, mapping.iova, edu_dev.DMA_BUF, n)
        edu_dev.dma(bar, edu_dev.DMA_BUF, mapping.iova + 0x1000, n, to_ram=True)
        return mapping.read(0x1000, n) == pattern


@pytest.mark.parametrize("how", ["with", "close"])
def test_leaving_with_dma_still_mapped_closes_cleanly(edu_bdf, how):
    # the README's example: alloc, never unmap, leave the block (or close())
    dev = vfio.open_pci_device(edu_bdf, interface="container")
    try:
        container, group = dev.container, dev.group
        dev.enable_bus_master()
        vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
        buf = dev.dma.alloc(0x2000)
        other = dev.dma.alloc(0x1000)
        assert buf.mapped and len(container.groups) == 1
        cfd, gfd = container.fd, group.fd
    finally:
        if how == "with":
            with dev:
                pass
        else:
            dev.close()
    assert dev.closed and len(vec) == 0
    assert not buf.mapped and not other.mapped
    assert buf.unmap() == 0                    # already unmapped: nothing to do
    with pytest.raises(RegionAccessError):
        buf.read(0, 4)                         # alloc'ed memory was freed with its mapping
    assert container.fd == -1 and group.fd == -1
    assert not _fd_open(cfd) and not _fd_open(gfd)
    # nothing stays busy: the same device opens again, with a fresh container
    with vfio.open_pci_device(edu_bdf, interface="container") as again:
        assert again.dma.alloc(0x1000).iova % 0x1000 == 0


def test_callers_container_outlives_its_devices(edu_bdf):
    with vfio.Container() as c:
        with vfio.open_pci_device(edu_bdf, container=c) as dev:
            assert dev.container is c and c.groups == [dev.group]
            dev.enable_bus_master()
            m = c.alloc(0x2000, limit=edu_dev.DMA_MASK)
            assert _edu_dma_round_trip(dev, m)
        # the group left (the kernel dropped the IOMMU context with it), the
        # container unmapped first and is back to "no IOMMU model", still open
        assert c.fd >= 0 and c.groups == [] and c.iommu_type is None
        assert not m.mapped
        with pytest.raises(VfioError) as ei:
            c.alloc(0x1000)
        assert ei.value.errno == errno.EINVAL and "no IOMMU model set" in str(ei.value)
        # ... and takes the group again
        with vfio.open_pci_device(edu_bdf, container=c) as dev2:
            assert c.iommu_type == uapi.VFIO_TYPE1v2_IOMMU
            dev2.enable_bus_master()
            m2 = c.alloc(0x2000, limit=edu_dev.DMA_MASK)
            assert _edu_dma_round_trip(dev2, m2)
        assert not m2.mapped and c.fd >= 0
    assert c.fd == -1


def test_callers_group_stays_open_after_its_device(edu_bdf):
    with vfio.Container() as c, vfio.Group(vfio.group_path_of(edu_bdf)) as g:
        c.add_group(g)
        c.set_iommu()
        with g.open_device(edu_bdf) as dev:
            assert dev.group is g and dev.container is c and g.users == 1
            m = c.alloc(0x1000)
        assert g.users == 0 and g.fd >= 0 and g.container_set and m.mapped
        with g.open_device(edu_bdf) as dev:
            assert dev.info.is_pci
    assert g.fd == -1 and not m.mapped


def test_dma_mapping_reads_and_writes_what_the_device_dmas(edu_bdf):
    with vfio.open_pci_device(edu_bdf) as dev:
        dev.enable_bus_master()
        m = dev.dma.alloc(0x2000, limit=edu_dev.DMA_MASK)
        assert len(m) == 0x2000 and m.iova + len(m) <= edu_dev.DMA_MASK
        assert _edu_dma_round_trip(dev, m, 2048)
        v = m.view()
        assert len(v) == 0x2000 and bytes(v[0x1000:0x1004]) == m.read(0x1000, 4)
        v.release()
        for off, n in ((0x2000, 1), (0x1fff, 2), (-1, 1)):
            with pytest.raises(RegionAccessError) as ei:
                m.read(off, n)
            assert f"{m.iova:#x}" in str(ei.value)
        with pytest.raises(RegionAccessError):
            m.write(0x1ffc, b"12345")


def test_bus_master_is_off_after_open_and_the_api_sets_it(edu_bdf):
    with vfio.open_pci_device(edu_bdf) as dev:
        assert not dev.bus_master
        assert not dev.config.read16(R.COMMAND) & R.COMMAND_MASTER
        dev.enable_bus_master()
        assert dev.bus_master and dev.config.read16(R.COMMAND) & R.COMMAND_MASTER
        # with it, edu's MSI arrives
        with dev.region(0).map() as bar:
            vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
            bar.write32(0x60, 0x1)
            assert vec[0].wait(10) >= 1
            bar.write32(0x64, bar.read32(0x24))
        dev.disable_bus_master()
        assert not dev.bus_master


def test_enable_irq_on_an_index_without_vectors_says_so(edu_bdf):
    # edu has INTx and one MSI vector, but no MSI-X capability
    with vfio.open_pci_device(edu_bdf) as dev:
        assert dev.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
        with pytest.raises(VfioError) as ei:
            dev.enable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
        assert ei.value.errno == errno.EINVAL
        assert "no vectors" in str(ei.value) and "MSI-X" in str(ei.value) and edu_bdf in str(ei.value)
        with pytest.raises(VfioError) as ei:
            dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX, count=2)
        assert ei.value.errno == errno.EINVAL and "the device has 1" in str(ei.value)
        # nothing was left half-enabled: the one MSI vector still works
        assert len(dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)) == 1


@pytest.mark.cdev
def test_cdev_leaving_with_dma_still_mapped_closes_cleanly(edu_bdf):
    from vfio.iommufd import IommuFD, open_cdev_device
    with vfio.open_pci_device(edu_bdf, interface="cdev") as dev:
        ioas, ictx = dev.ioas, dev.iommufd
        dev.enable_bus_master()
        m = dev.dma.alloc(0x2000, limit=edu_dev.DMA_MASK)
        assert _edu_dma_round_trip(dev, m)
    assert not m.mapped and ioas.id is None and ictx.fd == -1
    # a caller's iommufd: the IOAS made for the device goes with it, the iommufd stays
    with IommuFD() as mine:
        with open_cdev_device(edu_bdf, iommufd=mine) as dev:
            ioas = dev.ioas
            dev.enable_bus_master()
            m = ioas.alloc(0x2000, limit=edu_dev.DMA_MASK)
            assert _edu_dma_round_trip(dev, m)
        assert ioas.id is None and not m.mapped and mine.fd >= 0 and mine._objects == []
        # a caller's IOAS stays too, with its mappings, until the caller closes it
        ioas = mine.alloc_ioas()
        with open_cdev_device(edu_bdf, iommufd=mine, ioas=ioas) as dev:
            m = ioas.alloc(0x1000, limit=edu_dev.DMA_MASK)
        assert ioas.id is not None and m.mapped
        ioas.close()
        assert not m.mapped
