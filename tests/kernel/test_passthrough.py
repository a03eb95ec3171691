"""The passthrough device model against the real vfio-pci driver (QEMU edu and nvme in the harness guest).

Each test drives the model as a guest OS would: BARs sized and programmed in
the virtual config space, MMIO at the guest-physical addresses it chose,
MSI/MSI-X enabled in the virtual capabilities and table (the model issues the
SET_IRQS), interrupts received on the model's eventfds, DMA into guest memory
mapped at IOVA == guest-physical address, state saved and loaded, reset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from vfio import uapi
from vfio.pci import regs as R
from vfio.pci.passthrough import PassthroughDevice

pytestmark = pytest.mark.kernel

from tests.paths import REPO as ROOT
MSIX = uapi.VFIO_PCI_MSIX_IRQ_INDEX
EDU_GPA, NVME_GPA, RAM_GPA = 0xE010_0000, 0xE000_0000, 0x30_0000


def size_bar(pt, index):
    off = R.BASE_ADDRESS_0 + 4 * index
    pt.config_write(off, 4, 0xFFFFFFFF)
    return pt.config_read(off, 4)


def guest_enable(pt, gpa):
    pt.config_write(R.BASE_ADDRESS_0, 4, gpa)
    if pt.bar(0).kind == "mem64":
        pt.config_write(R.BASE_ADDRESS_0 + 4, 4, 0)
    pt.config_write(R.COMMAND, 2, pt.config_read(R.COMMAND, 2) | R.COMMAND_MEMORY | R.COMMAND_MASTER)


def enable_msi(pt):
    off = pt.config.find_capability(R.CAP_ID_MSI)
    pt.config_write(off + R.MSI_ADDRESS_LO, 4, 0xFEE00000)
    pt.config_write(off + R.MSI_DATA_64, 2, 0x31)
    pt.config_write(off + R.MSI_FLAGS, 2, pt.config_read(off + R.MSI_FLAGS, 2) | R.MSI_FLAGS_ENABLE)
    return off


def enable_msix(pt):
    off = pt.config.find_capability(R.CAP_ID_MSIX)
    ctl = pt.config_read(off + R.MSIX_FLAGS, 2)
    pt.config_write(off + R.MSIX_FLAGS, 2, (ctl | R.MSIX_FLAGS_ENABLE) & ~R.MSIX_FLAGS_MASKALL)
    return pt.config_read(off + R.MSIX_TABLE, 4) & R.MSIX_TABLE_OFFSET


def run_example(name, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", name), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def edu(edu_bdf):
    with PassthroughDevice.open(edu_bdf, interface="container") as pt:
        yield pt


@pytest.fixture
def nvme(nvme_bdf):
    with PassthroughDevice.open(nvme_bdf, interface="container") as pt:
        yield pt


def test_edu_bar_sizing_programming_and_mmio(edu):
    host_bar0 = edu.device.config.read32(R.BASE_ADDRESS_0)
    assert size_bar(edu, 0) == 0xFFF00000                      # 1 MiB memory BAR, as vfio-pci reports it
    guest_enable(edu, EDU_GPA)
    assert edu.config_read(R.BASE_ADDRESS_0, 4) == EDU_GPA
    assert edu.device.config.read32(R.BASE_ADDRESS_0) == host_bar0   # never reaches the device
    assert edu.device.config.read16(R.COMMAND) & R.COMMAND_MASTER    # Command does
    assert edu.mmio_read(EDU_GPA, 4) == 0x010000ED
    edu.mmio_write(EDU_GPA + 4, 4, 0x12345678)
    assert edu.mmio_read(EDU_GPA + 4, 4) == ~0x12345678 & 0xFFFFFFFF
    assert edu.bar(0).direct_areas == [(0, 1 << 20)]            # no MSI-X: the whole BAR is direct


def test_edu_msi_from_the_virtual_capability(edu):
    guest_enable(edu, EDU_GPA)
    enable_msi(edu)
    assert edu.irq_mode == "msi"
    efd = edu.msi_vector(0).eventfd
    edu.mmio_write(EDU_GPA + 0x20, 4, 0x80)                     # interrupt at factorial completion
    edu.mmio_write(EDU_GPA + 0x08, 4, 10)
    assert efd.wait(10) >= 1
    st = edu.mmio_read(EDU_GPA + 0x24, 4)
    edu.mmio_write(EDU_GPA + 0x64, 4, st)
    assert st & 1 and edu.mmio_read(EDU_GPA + 0x08, 4) == 3628800
    # disabling MSI in the capability tears the vector down in the kernel: the device's MSI is lost
    off = edu.config.find_capability(R.CAP_ID_MSI)
    edu.config_write(off + R.MSI_FLAGS, 2, 0)
    assert edu.irq_mode == "none"
    edu.mmio_write(EDU_GPA + 0x60, 4, 0x2)
    assert efd.wait(0.5) == 0
    edu.mmio_write(EDU_GPA + 0x64, 4, 0x2)


def test_edu_intx_unmask_and_resample(edu):
    guest_enable(edu, EDU_GPA)
    intx = edu.enable_intx()
    assert edu.irq_mode == "intx"
    for unmask in (edu.intx_unmask, intx.resample.signal):      # EOI both ways
        edu.mmio_write(EDU_GPA + 0x60, 4, 0x40)
        assert intx.eventfd.wait(10) >= 1
        edu.mmio_write(EDU_GPA + 0x64, 4, edu.mmio_read(EDU_GPA + 0x24, 4))   # device deasserts
        unmask()
    # MSI takes over from INTx, and INTx comes back when MSI goes
    off = enable_msi(edu)
    assert edu.irq_mode == "msi"
    edu.config_write(off + R.MSI_FLAGS, 2, 0)
    assert edu.irq_mode == "intx"
    edu.mmio_write(EDU_GPA + 0x60, 4, 0x40)
    assert intx.eventfd.wait(10) >= 1
    edu.mmio_write(EDU_GPA + 0x64, 4, 0x40)


def test_edu_dma_through_guest_memory(edu):
    guest_enable(edu, EDU_GPA)
    enable_msi(edu)
    m = edu.map_guest_memory(RAM_GPA, 0x2000)
    assert m.iova == RAM_GPA
    pattern = bytes((i * 13 + 5) & 0xFF for i in range(2048))
    edu.guest_write(RAM_GPA, pattern)
    for src, dst, cmd in ((RAM_GPA, 0x40000, 0x1), (0x40000, RAM_GPA + 0x1000, 0x7)):
        edu.mmio_write(EDU_GPA + 0x80, 8, src)
        edu.mmio_write(EDU_GPA + 0x88, 8, dst)
        edu.mmio_write(EDU_GPA + 0x90, 8, len(pattern))
        edu.mmio_write(EDU_GPA + 0x98, 8, cmd)
        if cmd == 0x1:                                          # edu drops register writes while it runs
            deadline = time.monotonic() + 10
            while edu.mmio_read(EDU_GPA + 0x98, 8) & 1 and time.monotonic() < deadline:
                time.sleep(0.005)
    assert edu.msi_vector(0).eventfd.wait(10) >= 1
    st = edu.mmio_read(EDU_GPA + 0x24, 4)
    edu.mmio_write(EDU_GPA + 0x64, 4, st)
    assert st & 0x100
    assert edu.guest_read(RAM_GPA + 0x1000, len(pattern)) == pattern


def test_edu_example_runs(edu_bdf):
    r = run_example("edu_driver.py", edu_bdf, "--factorial", "12")
    assert r.returncode == 0, r.stderr
    assert "factorial(12): 479001600" in r.stdout and "dma: ok" in r.stdout


def test_nvme_msix_masking_through_the_trapped_table(nvme):
    guest_enable(nvme, NVME_GPA)
    toff = enable_msix(nvme)
    assert nvme.irq_mode == "msix"
    bar = nvme.bar(0)
    assert all(not (o < toff + 16 and toff < o + s) for o, s in bar.direct_areas)
    v1 = nvme.msix_vector(1)
    assert v1.masked
    nvme.device.trigger_irq(MSIX, 1)                             # the kernel's loopback: as if the device fired
    assert v1.eventfd.wait(0.5) == 0
    assert nvme.mmio_read(NVME_GPA + 0x3000, 8) & 0b10           # PBA bit 1 (PBA at 0x3000 in QEMU's nvme)
    entry = NVME_GPA + toff + 16
    nvme.mmio_write(entry, 4, 0xFEE00000)
    nvme.mmio_write(entry + 8, 4, 0x41)
    nvme.mmio_write(entry + 12, 4, 0)                            # unmask: the pending interrupt arrives
    assert v1.eventfd.wait(1) == 1
    assert not nvme.mmio_read(NVME_GPA + 0x3000, 8) & 0b10
    nvme.device.trigger_irq(MSIX, 1)
    assert v1.eventfd.wait(5) == 1


def test_nvme_state_save_reset_load(nvme):
    guest_enable(nvme, NVME_GPA)
    toff = enable_msix(nvme)
    nvme.mmio_write(NVME_GPA + toff + 8, 4, 0x30)
    nvme.mmio_write(NVME_GPA + toff + 12, 4, 0)
    state = json.loads(json.dumps(nvme.get_state()))
    nvme.bar(0).write32(0x14, 0x00460001)                           # CC.EN: the controller starts up
    nvme.reset()                                                 # FLR; the model back at power-on
    assert nvme.irq_mode == "none"
    assert not nvme.device.config.read16(R.COMMAND) & (R.COMMAND_MASTER | R.COMMAND_MEMORY)
    assert not nvme.config_read(R.COMMAND, 2) & R.COMMAND_MASTER
    assert nvme.config_read(R.BASE_ADDRESS_0, 4) != NVME_GPA
    nvme.set_state(state)
    assert nvme.irq_mode == "none"                               # loading is not programming
    nvme.resume()
    assert nvme.irq_mode == "msix"
    assert nvme.device.config.read16(R.COMMAND) & R.COMMAND_MASTER
    assert nvme.mmio_read(NVME_GPA + toff + 8, 4) == 0x30
    assert nvme.mmio_read(NVME_GPA + 0x14, 4) & 1 == 0             # the FLR disabled the controller
    nvme.device.trigger_irq(MSIX, 0)
    assert nvme.msix_vector(0).eventfd.wait(5) == 1
    assert nvme.get_state() == state


def test_nvme_example_reports_the_serial(nvme_bdf, nvme_serial):
    r = run_example("nvme_identify.py", nvme_bdf)
    assert r.returncode == 0, r.stderr
    lines = dict(line.split(": ", 1) for line in r.stdout.splitlines() if ": " in line)
    assert lines.get("serial") == nvme_serial
    assert lines.get("vendor") == "0x1b36" and "QEMU" in lines.get("model", "")
