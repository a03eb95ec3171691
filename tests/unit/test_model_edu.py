"""vfio.models.edu.EduModel behind vfio.model's backend, on the host: the same
behaviour tests as the real edu in the guest (tests/common_edu_behaviour.py),
plus what only the model does (DMA faults and QEMU's hw_error as exceptions)
and the model backend's own contract."""

from __future__ import annotations

import errno
import importlib.util
import os

import pytest

from tests.common_edu_behaviour import *  # noqa: F401,F403  (the shared tests)
from tests.common_edu_behaviour import DMA_BUF, DMA_LIMIT, MSI, INTX, dma, unmapped_iova
from tests.paths import EXAMPLES
from vfio import uapi
from vfio.errors import InvalidValue, RegionAccessError, VfioError
from vfio.model import DeviceModel, DmaFault, SoftIommu, open_model_device
from vfio.models.edu import EduHwError, EduModel


@pytest.fixture
def edu_dev():
    with open_model_device(EduModel()) as dev:
        dev.enable_bus_master()
        yield dev


def test_dma_from_an_unmapped_iova_is_a_fault_naming_it(edu_dev):
    bar = edu_dev.region(0)
    iova = unmapped_iova(edu_dev)
    with pytest.raises(DmaFault) as ei:
        dma(bar, iova, DMA_BUF, 16)
    assert f"IOVA {iova:#x} is not mapped" in str(ei.value) and ei.value.errno == errno.EFAULT
    with pytest.raises(DmaFault):
        dma(bar, DMA_BUF, iova + 0x10, 16, to_ram=True)
    assert bar.read64(0x98) & 1 == 0                     # the engine is idle again
    with edu_dev.dma.alloc(0x1000, limit=DMA_LIMIT) as m:  # and works
        m.write(0, b"x" * 16)
        dma(bar, m.iova, DMA_BUF, 16)
        dma(bar, DMA_BUF, m.iova + 0x100, 16, to_ram=True)
        assert m.read(0x100, 16) == b"x" * 16


def test_dma_across_adjacent_mappings_and_permissions(edu_dev):
    bar = edu_dev.region(0)
    a = edu_dev.dma.alloc(0x1000, iova=0x200000)
    b = edu_dev.dma.alloc(0x1000, iova=0x201000, writable=False)
    a.write(0xFF0, b"0123456789abcdef")
    b.write(0, b"ghijklmnopqrstuv")
    dma(bar, 0x200FF0, DMA_BUF, 32)                      # one transfer over both mappings
    dma(bar, DMA_BUF, 0x200000, 32, to_ram=True)
    assert a.read(0, 32) == b"0123456789abcdefghijklmnopqrstuv"
    with pytest.raises(DmaFault, match="0x201000 is not writable"):
        dma(bar, DMA_BUF, 0x200FF8, 16, to_ram=True)
    a.unmap()
    b.unmap()


def test_out_of_bounds_dma_is_edus_hw_error(edu_dev):
    bar = edu_dev.region(0)
    with edu_dev.dma.alloc(0x2000, limit=DMA_LIMIT) as m:
        for dst, n in ((DMA_BUF, 4096), (DMA_BUF, 0), (DMA_BUF - 1, 4), (DMA_BUF + 0xFFF, 1)):
            with pytest.raises(EduHwError, match="out of bounds"):
                dma(bar, m.iova, dst, n)
        dma(bar, m.iova, DMA_BUF + 0xFFE, 1)


def test_dma_address_is_clamped_to_28_bits(edu_dev):
    bar = edu_dev.region(0)
    with edu_dev.dma.alloc(0x1000, iova=0x300000) as m:
        m.write(0, b"clamped!")
        dma(bar, (1 << 28) | 0x300000, DMA_BUF, 8)
        dma(bar, DMA_BUF, 0x300100, 8, to_ram=True)
        assert m.read(0x100, 8) == b"clamped!"


def test_no_dma_and_no_msi_without_bus_master():
    with open_model_device(EduModel()) as dev, dev.dma.alloc(0x1000) as m, dev.enable_irq(MSI) as vec:
        bar = dev.region(0)
        with pytest.raises(DmaFault, match="bus mastering off"):
            dma(bar, m.iova, DMA_BUF, 8)
        bar.write32(0x60, 1)
        assert vec.eventfds[0].wait(0.05) == 0          # the message is lost, the status kept
        assert bar.read32(0x24) == 1


def test_backend_contract():
    with open_model_device(EduModel()) as dev:
        assert dev.interface == "model" and isinstance(dev.dma, SoftIommu)
        assert dev.dma.iova_ranges() == [(0, 0xFEDFFFFF), (0xFEF00000, (1 << 48) - 1)]
        bar = dev.region(0)
        assert not bar.info.flags & uapi.VFIO_REGION_INFO_FLAG_MMAP
        with pytest.raises(RegionAccessError, match="no mmap-able area"):
            bar.map()
        with pytest.raises(VfioError) as ei:             # every access reaches the model
            dev.backend.mmap(0, 4096)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioError) as ei:             # past the BAR: as vfio-pci
            dev.backend.pread(bar.size, 4)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(VfioError):
            dev.region(uapi.VFIO_PCI_VGA_REGION_INDEX)
        with pytest.raises(VfioError):                   # no ERR index: edu is not PCI Express
            dev.irq_info(uapi.VFIO_PCI_ERR_IRQ_INDEX)
        dev.enable_irq(INTX)
        with pytest.raises(VfioError) as ei:             # one of INTx/MSI/MSI-X, as vfio-pci
            dev.enable_irq(MSI)
        assert ei.value.errno == errno.EINVAL
        dev.disable_irq(INTX)
        # config space: BAR sizing through the virtual config space
        dev.config.write32(0x10, 0xFFFFFFFF)
        assert dev.config.read32(0x10) == 0xFFF00000
        dev.config.write32(0x10, 0xE0000000)
        bar.write32(0x04, 1)
        dev.reset()                                      # model and config back to power-on
        assert dev.config.read32(0x10) == 0 and bar.read32(0x04) == 0


class _Recorder(DeviceModel):
    name = "recorder"
    bars = {2: 0x1000}

    def __init__(self):
        c = bytearray(256)
        c[0:4] = (0x1234 | 0xBEEF << 16).to_bytes(4, "little")
        c[0x18] = 0x00                                   # BAR2: 32-bit memory
        self.config = bytes(c)
        self.calls = []

    def read(self, bar, offset, size):
        self.calls.append(("r", bar, offset, size))
        return (1 << 8 * size) - 1 if offset == 0x100 else offset & ((1 << 8 * size) - 1)

    def write(self, bar, offset, size, value):
        self.calls.append(("w", bar, offset, size, value))


def test_each_access_reaches_the_model_as_one_call_of_its_width():
    model = _Recorder()
    with open_model_device(model) as dev:
        bar = dev.region(2)
        assert bar.size == 0x1000 and dev.region(0).size == 0
        assert (bar.read8(3), bar.read16(2), bar.read32(4), bar.read64(8)) == (3, 2, 4, 8)
        bar.write32(0x10, 0xDEADBEEF)
        assert model.calls == [("r", 2, 3, 1), ("r", 2, 2, 2), ("r", 2, 4, 4), ("r", 2, 8, 8),
                               ("w", 2, 0x10, 4, 0xDEADBEEF)]
        model.calls.clear()
        bar.read(0x1, 7)                                 # split as vfio_pci_core_do_io_rw splits it
        assert [c[2:] for c in model.calls] == [(1, 1), (2, 2), (4, 4)]
        assert dev.irq_info(MSI).count == 0 and dev.irq_info(INTX).count == 0


def test_a_model_is_served_once_and_refuses_bad_values():
    model = _Recorder()
    with open_model_device(model):
        with pytest.raises(InvalidValue, match="already served"):
            open_model_device(model)
    with pytest.raises(InvalidValue, match="not served"):
        model.raise_irq(MSI)

    class Bad(_Recorder):
        def read(self, bar, offset, size):
            return 1 << 8 * size

    with open_model_device(Bad()) as dev:
        with pytest.raises(InvalidValue, match="not a 32-bit value"):
            dev.region(2).read32(0)

    class Odd(_Recorder):
        bars = {0: 0x1800}

    with pytest.raises(InvalidValue, match="BAR 0 size 0x1800"):
        open_model_device(Odd())


def _load_example():
    spec = importlib.util.spec_from_file_location("edu_driver_example", os.path.join(EXAMPLES, "edu_driver.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_example_driver_runs_on_the_model(capsys):
    ex = _load_example()
    assert ex.main(["--model", "--factorial", "12", "--dma-bytes", "4095"]) == 0
    assert capsys.readouterr().out == "liveness: 0xedcba987\nfactorial(12): 479001600\ndma: ok (4095 bytes)\n"
