"""The fd layer against the real vfio-pci driver (QEMU edu and nvme in the harness guest).

Everything goes through the toolkit's API.  Facts these tests pin down:
vfio-pci leaves bus mastering off (DMA and MSI are dropped until PCI_COMMAND
bit 2 is set through the config region); edu accepts only 4/8-byte MMIO, its
DMA mask is 28 bits and its DMA engine works on a 4 KiB buffer at 0x40000;
GET_IRQ_INFO for the ERR index is EINVAL on a device without a PCIe capability.
"""

from __future__ import annotations

import errno
import os
import time

import pytest

import vfio
from vfio import uapi
from vfio.errors import RegionAccessError, VfioError

from tests.kernel import kernel_edu as edu_dev
from tests.kernel import kernel_iommu

pytestmark = pytest.mark.kernel

EDU_DMA_BUF = edu_dev.DMA_BUF
EDU_DMA_MASK = edu_dev.DMA_MASK
PCI_COMMAND = edu_dev.PCI_COMMAND
PCI_COMMAND_MASTER = edu_dev.PCI_COMMAND_MASTER
_bus_master = edu_dev.bus_master

def _sysfs_id(bdf, name):
    with open(f"/sys/bus/pci/devices/{bdf}/{name}") as f:
        return int(f.read(), 16)


@pytest.fixture
def edu(edu_bdf):
    with vfio.open_pci_device(edu_bdf, interface="container") as dev:
        yield dev


@pytest.fixture
def nvme(nvme_bdf):
    with vfio.open_pci_device(nvme_bdf, interface="container") as dev:
        yield dev


def test_container_group_device_setup(edu_bdf, harness_kernel):
    with vfio.Container() as c:
        assert c.check_extension(uapi.VFIO_TYPE1v2_IOMMU) == 1
        exts = c.extensions()
        # the native container offers no-IOMMU only when it is enabled; iommufd's
        # emulation of the container advertises it whenever CONFIG_VFIO_NOIOMMU is built
        assert exts["TYPE1"] == 1
        assert exts["NOIOMMU"] == (1 if harness_kernel == "iommufd-container" else 0)
        with vfio.Group(vfio.group_path_of(edu_bdf)) as g:
            assert g.viable
            assert not g.container_set
            c.add_group(g)
            assert g.container_set
            assert c.set_iommu() == uapi.VFIO_TYPE1v2_IOMMU
            with g.open_device(edu_bdf) as dev:
                assert dev.info.is_pci and not dev.info.is_platform
                assert dev.info.num_regions >= 9 and dev.info.num_irqs == 5
                # asked with the device open: iommufd's container emulation attaches the
                # device (and learns its reserved ranges) only when the device fd is opened
                info = c.iommu_info()
                assert info.iova_pgsizes & 0x1000
                # the MSI window the kernel reserves for the group (x86's 0xfee00000, SMMUv3's
                # software MSI window) is never usable IOVA space, and is exactly the hole
                kernel_iommu.assert_msi_holes(edu_bdf, info.iova_ranges)
                if harness_kernel != "iommufd-container":
                    # type1 counts down from vfio_iommu_type1.dma_entry_limit (65535 by default)
                    assert 0 < info.dma_avail <= 65535
            # the group allows one device fd per open; a bad name is refused by the kernel
            with pytest.raises(VfioError) as ei:
                g.open_device("0000:ff:1f.7")
            assert ei.value.errno == errno.ENODEV and "0000:ff:1f.7" in str(ei.value)


def test_edu_regions(edu):
    bar0 = edu.region(uapi.VFIO_PCI_BAR0_REGION_INDEX).info
    assert bar0.size == 1 << 20
    assert bar0.readable and bar0.writable and bar0.mmappable
    assert bar0.mmap_areas() == [(0, 1 << 20)]
    for i in range(1, 6):   # edu has only BAR0
        assert edu.region(i).info.size == 0
    cfg = edu.config.info
    assert cfg.readable and cfg.writable and not cfg.mmappable and cfg.size in (256, 4096)
    # edu is not VGA: vfio-pci refuses the VGA index, and `regions` leaves it out
    with pytest.raises(VfioError) as ei:
        edu.region_info(uapi.VFIO_PCI_VGA_REGION_INDEX)
    assert ei.value.errno == errno.EINVAL
    infos = [r.info for r in edu.regions]
    assert [i.index for i in infos] == list(range(uapi.VFIO_PCI_VGA_REGION_INDEX))
    offs = [i.offset for i in infos if i.size]
    assert len(set(offs)) == len(offs)


def test_nvme_regions_msix_mappable(nvme):
    bar0 = nvme.region(0).info
    assert bar0.size >= 0x2000 and bar0.mmappable
    assert bar0.msix_mappable, f"caps: {bar0.caps}"
    assert bar0.flags & uapi.VFIO_REGION_INFO_FLAG_CAPS
    # the raw answer round-trips through our decoder: its capability chain was fetched with a retry
    assert len(bar0.raw) > 32
    for r in nvme.regions:
        assert r.info.index == r.index
        if r.info.size == 0:     # absent BARs have no flags
            assert r.info.flags == 0


def test_edu_bar0_mmap_registers(edu):
    with edu.region(0).map() as bar:
        assert bar.read32(0x00) == 0x010000ED
        bar.write32(0x04, 0x12345678)
        assert bar.read32(0x04) == (~0x12345678) & 0xFFFFFFFF
        bar.write32(0x04, 0)
        assert bar.read32(0x04) == 0xFFFFFFFF
        # the same register through pread/pwrite agrees with the mapping
        assert edu.region(0).read32(0x00) == 0x010000ED
        # bulk access is split into naturally aligned 8/4-byte accesses; edu answers
        # 4-byte reads below 0x80 and 8-byte ones from 0x80 (DMA registers)
        assert bar.read(0, 4) == (0x010000ED).to_bytes(4, "little")
        bar.write(0x80, (0x1122334455667788).to_bytes(8, "little"))
        assert bar.read64(0x80) == 0x1122334455667788
        with pytest.raises(RegionAccessError):
            bar.read32(1 << 20)
        with pytest.raises(RegionAccessError):
            bar.read32(2)


def test_config_space_through_config_region(edu, edu_bdf):
    cfg = edu.config
    assert cfg.read16(0) == _sysfs_id(edu_bdf, "vendor") == 0x1234
    assert cfg.read16(2) == _sysfs_id(edu_bdf, "device") == 0x11E8
    assert cfg.read32(0) == 0x11E81234
    assert cfg.read8(0) == 0x34
    raw = cfg.read(0, 64)
    assert int.from_bytes(raw[8:12], "little") >> 8 == _sysfs_id(edu_bdf, "class")
    # vfio-pci leaves bus mastering off; we can turn it on through the config region
    cmd = cfg.read16(PCI_COMMAND)
    assert not cmd & PCI_COMMAND_MASTER
    assert _bus_master(edu) & PCI_COMMAND_MASTER
    with pytest.raises(RegionAccessError):
        cfg.read32(cfg.size)


def test_bad_region_and_irq_index(edu):
    with pytest.raises(VfioError) as ei:
        edu.region_info(edu.info.num_regions + 3)
    assert ei.value.errno == errno.EINVAL
    assert "VFIO_DEVICE_GET_REGION_INFO index 12" in str(ei.value) and edu.name in str(ei.value)
    with pytest.raises(VfioError) as ei:
        edu.irq_info(edu.info.num_irqs)
    assert ei.value.errno == errno.EINVAL and "GET_IRQ_INFO index 5" in str(ei.value)
    with pytest.raises(VfioError) as ei:
        edu.set_irqs(uapi.VFIO_PCI_MSI_IRQ_INDEX, uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 5, 1)
    assert ei.value.errno == errno.EINVAL


def test_err_irq_index_follows_pcie(edu, nvme):
    from vfio.pci.config import ConfigSpace
    for dev in (edu, nvme):
        cs = ConfigSpace(dev.config.read(0, 256))
        is_pcie = cs.find(0x10) is not None
        if is_pcie:
            assert dev.irq_info(uapi.VFIO_PCI_ERR_IRQ_INDEX).count == 1
        else:
            with pytest.raises(VfioError) as ei:
                dev.irq_info(uapi.VFIO_PCI_ERR_IRQ_INDEX)
            assert ei.value.errno == errno.EINVAL
    # nvme is a PCIe endpoint in QEMU: the ERR index exists there
    assert nvme.irq_info(uapi.VFIO_PCI_ERR_IRQ_INDEX).count == 1


def test_edu_msi_and_factorial(edu):
    msi = edu.irq_info(uapi.VFIO_PCI_MSI_IRQ_INDEX)
    assert msi.count == 1 and msi.eventfd
    _bus_master(edu)
    with edu.region(0).map() as bar:
        vec = edu.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
        bar.write32(0x60, 0x1234)                          # raise interrupt
        assert vec[0].wait(10) >= 1
        st = bar.read32(0x24)
        assert st & 0x1234 == 0x1234
        bar.write32(0x64, st)                              # acknowledge
        bar.write32(0x20, 0x80)                            # irq on factorial completion
        bar.write32(0x08, 10)
        assert vec[0].wait(10) >= 1
        assert bar.read32(0x08) == 3628800
        bar.write32(0x64, bar.read32(0x24))
        bar.write32(0x20, 0)
        # loopback trigger from the kernel side, no device involved
        edu.trigger_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX, 0, 1)
        assert vec[0].wait(5) == 1
        efd = vec[0]
        edu.disable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
        assert efd.closed and len(vec) == 0


def test_edu_intx_automasked_unmask(edu):
    info = edu.irq_info(uapi.VFIO_PCI_INTX_IRQ_INDEX)
    assert info.count == 1 and info.maskable and info.automasked
    _bus_master(edu)
    with edu.region(0).map() as bar:
        vec = edu.enable_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)
        for _ in range(2):      # twice: the unmask must re-arm the line
            bar.write32(0x60, 0x40)
            assert vec[0].wait(10) >= 1
            st = bar.read32(0x24)
            assert st & 0x40
            bar.write32(0x64, st)                          # device drops the line
            # still masked by the kernel until we unmask; no second event meanwhile
            assert vec[0].wait(0.2) == 0
            edu.unmask_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
        # masked explicitly: the device's interrupt is held back until unmasked
        edu.mask_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
        bar.write32(0x60, 0x40)
        assert vec[0].wait(0.5) == 0
        edu.unmask_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
        assert vec[0].wait(10) >= 1
        bar.write32(0x64, bar.read32(0x24))
        edu.unmask_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX, 0, 1)
        edu.disable_irq(uapi.VFIO_PCI_INTX_IRQ_INDEX)


def test_edu_dma_round_trip_through_iommu(edu):
    _bus_master(edu)
    space = edu.dma
    assert isinstance(space, vfio.Container)
    with vfio.DmaBuffer(0x2000) as buf:             # caller-owned: outlives its mapping
        m = space.map(buf, limit=EDU_DMA_MASK)
        assert m.iova % 0x1000 == 0 and m.iova + m.size <= EDU_DMA_MASK
        pattern = bytes((i * 7 + 3) & 0xFF for i in range(1024))
        buf.write(0, pattern)
        with edu.region(0).map() as bar:
            vec = edu.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
            edu_dev.dma(bar, m.iova, EDU_DMA_BUF, len(pattern))
            edu_dev.dma(bar, EDU_DMA_BUF, m.iova + 0x1000, len(pattern), to_ram=True, irq=True)
            assert vec[0].wait(10) >= 1
            assert bar.read32(0x24) & 0x100
            bar.write32(0x64, bar.read32(0x24))
            assert buf.read(0x1000, len(pattern)) == pattern
            # after unmapping, the device's DMA to that IOVA no longer lands in our memory
            iova = m.iova
            assert m.unmap() == m.size
            buf.write(0x1000, bytes(len(pattern)))
            edu_dev.dma(bar, EDU_DMA_BUF, iova + 0x1000, len(pattern), to_ram=True)
            assert buf.read(0x1000, len(pattern)) == bytes(len(pattern))


def test_dma_errors(edu, edu_bdf):
    space = edu.dma
    buf = vfio.DmaBuffer(0x1000)
    try:
        # the MSI window is reserved: the allocator refuses it, and so does the kernel
        for start, end in kernel_iommu.msi_windows(edu_bdf):
            for iova in (start, end + 1 - 0x1000):
                with pytest.raises(ValueError):
                    space.map(buf, iova=iova)
                with pytest.raises(VfioError) as ei:
                    space.map_dma(buf.vaddr, iova, 0x1000)
                assert ei.value.errno == errno.EINVAL and f"{iova:#x}" in str(ei.value)
        # unmapping an IOVA that was never mapped unmaps nothing (type1 semantics)
        assert space.unmap_dma(0x7000000, 0x1000) == 0
        # a misaligned size is refused
        with pytest.raises(VfioError) as ei:
            space.map_dma(buf.vaddr, 0x200000, 0x800)
        assert ei.value.errno == errno.EINVAL
    finally:
        buf.close()


def test_nvme_msix_and_identify(nvme, nvme_serial):
    msix = nvme.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
    assert msix.count >= 2 and msix.eventfd
    assert nvme.irq_info(uapi.VFIO_PCI_MSI_IRQ_INDEX).noresize
    _bus_master(nvme)
    with nvme.region(0).map() as bar:
        cap = bar.read64(0x00)
        assert bar.read32(0x08) >= 0x10000
        dstrd = (cap >> 32) & 0xF
        vec = nvme.enable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, count=2)
        nvme.trigger_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX, 1, 1)
        assert vec[1].wait(5) == 1 and vec[0].read() == 0
        m = nvme.dma.alloc(0x3000)
        sq, cq, data = m.iova, m.iova + 0x1000, m.iova + 0x2000
        bar.write32(0x14, 0)
        t0 = time.monotonic()
        while bar.read32(0x1C) & 1:
            assert time.monotonic() - t0 < 10
            time.sleep(0.005)
        bar.write32(0x24, (15 << 16) | 15)
        bar.write64(0x28, sq)
        bar.write64(0x30, cq)
        bar.write32(0x14, 1 | (6 << 16) | (4 << 20))
        t0 = time.monotonic()
        while not bar.read32(0x1C) & 1:
            assert time.monotonic() - t0 < 10
            time.sleep(0.005)
        cmd = bytearray(64)
        cmd[0] = 0x06
        cmd[2:4] = (0x42).to_bytes(2, "little")
        cmd[24:32] = data.to_bytes(8, "little")
        cmd[40:44] = (1).to_bytes(4, "little")
        m.buffer.write(0, bytes(cmd))
        bar.write32(0x1000, 1)
        assert vec[0].wait(10) >= 1
        dw3 = int.from_bytes(m.buffer.read(0x1000 + 12, 4), "little")
        assert dw3 & 0xFFFF == 0x42 and (dw3 >> 16) & 1 == 1 and dw3 >> 17 == 0
        bar.write32(0x1000 + (4 << dstrd), 1)
        ident = m.buffer.read(0x2000, 4096)
        assert int.from_bytes(ident[0:2], "little") == 0x1B36
        assert ident[4:24].decode().strip() == nvme_serial
        # function reset disables the controller
        nvme.disable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
        assert nvme.info.can_reset
        nvme.reset()
        assert bar.read32(0x14) & 1 == 0
        m.unmap()


def test_hot_reset_info(nvme, nvme_bdf):
    parent = os.path.basename(os.path.dirname(os.path.realpath(f"/sys/bus/pci/devices/{nvme_bdf}")))
    if parent.startswith("pci"):
        # on a root bus there is no bridge to reset: vfio-pci answers ENODEV
        with pytest.raises(VfioError) as ei:
            nvme.hot_reset_info()
        assert ei.value.errno == errno.ENODEV and "HOT_RESET_INFO" in str(ei.value)
    else:
        info = nvme.hot_reset_info()
        assert any(d.bdf == nvme_bdf for d in info.devices)


def test_closing_releases_everything(edu_bdf):
    dev = vfio.open_pci_device(edu_bdf)
    group_path = dev.group.path
    vec = dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX)
    bar = dev.region(0).map()
    ev = vec[0]
    efd = ev.fd
    dev.close()
    assert dev.closed and ev.closed and len(vec) == 0
    with pytest.raises(OSError):
        os.fstat(efd)
    with pytest.raises(RegionAccessError):
        bar.read32(0)
    # the group can be opened again: nothing kept it busy
    with vfio.Group(group_path) as g:
        assert g.viable


def test_device_features(edu):
    # vfio-pci implements the low-power features; edu has no migration driver
    assert edu.supports_feature(uapi.VFIO_DEVICE_FEATURE_LOW_POWER_ENTRY, set=True)
    assert not edu.supports_feature(uapi.VFIO_DEVICE_FEATURE_MIGRATION, get=True)
    with pytest.raises(VfioError) as ei:
        edu.migration_flags()
    assert ei.value.errno == errno.ENOTTY and "VFIO_DEVICE_FEATURE 1" in str(ei.value)
    # a feature index the kernel does not know at all
    assert not edu.supports_feature(0x7FF0, get=True)
