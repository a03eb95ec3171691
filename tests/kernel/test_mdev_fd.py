"""Mediated devices in the fd layer, on the real kernel: the sample parent mtty's
devices opened by UUID through their IOMMU group and through their cdev.

What mtty declares (samples/vfio-mdev/mtty.c), the oracle here: device API
vfio-pci, ``VFIO_DEVICE_FLAGS_PCI`` (no RESET flag), vfio-pci's 9 regions and 5
IRQ indexes; config space of 0xff bytes with vendor:device 4348:3253 and class
0x070002 (16550 serial); BAR0 (and BAR1 for the dual-port type mtty-2) an 8-byte
UART register file, other regions empty; INTx (maskable, automasked) and MSI
(noresize), one vector each, and EINVAL for MSI-X, ERR and REQ.
"""

from __future__ import annotations

import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.host.mdev import MdevHost, MdevInUse, create_mdev, remove_mdev

pytestmark = [pytest.mark.kernel, pytest.mark.mdev]

UART_LCR, UART_SCR = 3, 7
MTTY_CONFIG_SIZE = 0xFF


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


@pytest.fixture
def mtty2():
    """A fresh dual-port mtty mdev, removed afterwards."""
    uuid = create_mdev("mtty", "mtty-2")
    yield uuid
    if MdevHost().exists(uuid):
        remove_mdev(uuid)


def _check_mtty(dev, uuid: str, ports: int) -> None:
    assert dev.name == uuid
    assert dev.info.is_pci and not dev.info.can_reset
    assert dev.info.num_regions == uapi.VFIO_PCI_NUM_REGIONS and dev.info.num_irqs == uapi.VFIO_PCI_NUM_IRQS
    cfg = dev.config
    assert cfg.info.size == MTTY_CONFIG_SIZE
    assert cfg.read16(0) == 0x4348 and cfg.read16(2) == 0x3253
    assert cfg.read32(8) >> 8 == 0x070002 and cfg.read8(8) == 0x10       # class, revision
    assert cfg.read32(0x2C) == 0x32534348                               # subsystem IDs
    assert cfg.read(0x60, 15) == b"PCI Serial/UART"
    sizes = [dev.region_info(i).size for i in range(uapi.VFIO_PCI_ROM_REGION_INDEX)]
    assert sizes == [8, 8 if ports == 2 else 0, 0, 0, 0, 0]
    intx, msi = dev.irq_info(uapi.VFIO_PCI_INTX_IRQ_INDEX), dev.irq_info(uapi.VFIO_PCI_MSI_IRQ_INDEX)
    assert (intx.count, intx.eventfd, intx.maskable, intx.automasked) == (1, True, True, True)
    assert (msi.count, msi.eventfd, msi.noresize) == (1, True, True)
    with pytest.raises(vfio.VfioError) as e:
        dev.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
    assert e.value.errno == errno.EINVAL
    # the UART: the scratch register keeps what is written, per port
    for port in range(ports):
        bar = dev.region(port)
        bar.write8(UART_SCR, 0x5A + port)
        assert bar.read8(UART_SCR) == 0x5A + port
        bar.write8(UART_LCR, 0x03)                  # 8N1
        assert bar.read8(UART_LCR) == 0x03


@pytest.mark.parametrize("interface", ["container", pytest.param("cdev", marks=pytest.mark.cdev)])
def test_open_mtty_by_uuid(mtty2, interface):
    before = _fds()
    with vfio.open_mdev_device(mtty2.upper(), interface=interface) as dev:
        assert dev.interface == interface
        _check_mtty(dev, mtty2, ports=2)
        if interface == "container":
            assert dev.group is not None and dev.group.path == f"/dev/vfio/{MdevHost().device(mtty2).iommu_group}"
            assert dev.dma is dev.container
        else:
            assert dev.ioas is not None and dev.dma is dev.ioas
            assert dev.backend.path == f"/dev/vfio/devices/{MdevHost().device(mtty2).cdev}"
    assert _fds() == before


def test_single_port_type_has_one_bar():
    uuid = create_mdev("mtty", "mtty-1")
    try:
        with vfio.open_mdev_device(uuid) as dev:
            _check_mtty(dev, uuid, ports=1)
    finally:
        remove_mdev(uuid)


@pytest.mark.parametrize("interface", ["container", pytest.param("cdev", marks=pytest.mark.cdev)])
def test_remove_while_open_is_refused_and_the_mdev_stays(mtty2, interface):
    before = _fds()
    with vfio.open_mdev_device(mtty2, interface=interface) as dev:
        with pytest.raises(MdevInUse) as e:
            remove_mdev(mtty2)
        assert e.value.errno == errno.EBUSY and mtty2 in str(e.value) and "open" in str(e.value)
        assert MdevHost().exists(mtty2)
        assert dev.config.read16(0) == 0x4348          # still usable
    remove_mdev(mtty2)
    assert not MdevHost().exists(mtty2)
    assert _fds() == before


def test_two_mdevs_share_one_container(mtty2):
    other = create_mdev("mtty", "mtty-1")
    try:
        with vfio.open_mdev_device(mtty2, interface="container") as a, \
                vfio.open_mdev_device(other, container=a.container) as b:
            assert b.container is a.container and a.group is not b.group
            a.region(0).write8(UART_SCR, 0x11)
            b.region(0).write8(UART_SCR, 0x22)
            assert (a.region(0).read8(UART_SCR), b.region(0).read8(UART_SCR)) == (0x11, 0x22)
    finally:
        remove_mdev(other)


def test_open_errors_name_the_mdev():
    missing = "00000000-0000-0000-0000-00000000beef"
    with pytest.raises(vfio.VfioError) as e:
        vfio.open_mdev_device(missing, interface="container")
    assert e.value.errno == errno.ENODEV and missing in str(e.value)
    with pytest.raises(vfio.VfioError) as e:
        vfio.open_mdev_device(missing, interface="cdev")
    assert e.value.errno == errno.ENODEV
    with pytest.raises(ValueError, match="malformed mdev UUID"):
        vfio.open_mdev_device("not-a-uuid")


@pytest.mark.cdev
def test_a_second_parent_mdpy_with_an_mmappable_framebuffer():
    # mdpy (samples/vfio-mdev/mdpy.c): vfio-pci device_api, config 1b36:000f, BAR0 the
    # framebuffer (vmalloc'd, width*height*4 rounded up to a power of two), mmappable
    uuid = create_mdev("mdpy", "mdpy-vga")
    before = _fds()
    try:
        with vfio.open_mdev_device(uuid, interface="cdev") as dev:
            assert dev.info.is_pci and dev.config.read16(0) == 0x1B36 and dev.config.read16(2) == 0x000F
            bar0 = dev.region(0)
            assert bar0.info.mmappable and bar0.info.size == 2 << 20 and bar0.info.size >= 640 * 480 * 4
            with bar0.map() as fb:
                fb.write32(0x1000, 0x00FF00FF)
                fb.write32(bar0.info.size - 4, 0x12345678)
                assert (fb.read32(0x1000), fb.read32(bar0.info.size - 4)) == (0x00FF00FF, 0x12345678)
        assert _fds() == before
    finally:
        remove_mdev(uuid)
