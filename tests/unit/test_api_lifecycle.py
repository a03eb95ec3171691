"""Ownership and teardown order of devices, groups and containers, on the host.

A small stand-in for the kernel's type1 container (drivers/vfio/container.c and
vfio_iommu_type1.c) sits under ``vfio.uapi.ioctl`` and ``os.open``/``os.close``
for ``/dev/vfio/*``, with the behaviour the real-kernel tests
(tests/kernel/test_api_lifecycle.py) pin down: a group node opens once at a
time (EBUSY); the IOMMU model and every DMA mapping are dropped when the last
group leaves the container, after which UNMAP_DMA is EINVAL; UNSET_CONTAINER is
EBUSY while a device of the group is open, and closing the group fd then
detaches it when the last device fd closes.

Also on replayed devices: DmaMapping's accessors, the Bus Master accessors,
enable_irq on an index without vectors.
"""

from __future__ import annotations

import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.dma import DmaSpace
from vfio.errors import RegionAccessError, VfioError
from vfio.pci import regs as R


class FakeType1:
    """The kernel side of /dev/vfio/vfio and /dev/vfio/N, as far as these tests need it."""

    def __init__(self):
        self.kind = {}            # fd -> ("container"|"group"|"device", name)
        self.group_open = {}      # group name -> fd
        self.attached = {}        # group name -> container fd
        self.pending = set()      # group names whose fd closed while devices were open
        self.iommu = {}           # container fd -> type
        self.maps = {}            # container fd -> {iova: size}
        self.devices = {}         # device fd -> group name
        self.log = []

    def open(self, path, flags, mode=0o777, *, dir_fd=None, _real=os.open):
        if not path.startswith("/dev/vfio/"):
            return _real(path, flags, mode, dir_fd=dir_fd)
        name = path[len("/dev/vfio/"):]
        if name != "vfio" and name in self.group_open:
            raise OSError(errno.EBUSY, "Device or resource busy", path)
        fd = _real("/dev/null", os.O_RDWR | os.O_CLOEXEC)
        if name == "vfio":
            self.kind[fd] = ("container", name)
            self.maps[fd] = {}
        else:
            self.kind[fd] = ("group", name)
            self.group_open[name] = fd
        return fd

    def close(self, fd, _real=os.close):
        kind = self.kind.pop(fd, None)
        _real(fd)
        if kind is None:
            return
        what, name = kind
        self.log.append(f"close {what} {name}")
        if what == "group":
            del self.group_open[name]
            self.pending.add(name)
        elif what == "device":
            del self.devices[fd]
        for g in list(self.pending):       # a closed group detaches once its devices are gone
            if g not in self.devices.values():
                self.pending.discard(g)
                if g in self.attached:
                    self._detach(g)

    def _detach(self, group):
        c = self.attached.pop(group)
        if c not in self.attached.values():          # last group: the IOMMU context goes
            self.iommu.pop(c, None)
            if c in self.maps:
                self.maps[c].clear()

    def ioctl(self, fd, request, arg=0, what=""):
        what_kind, name = self.kind[fd]

        def fail(e):
            raise VfioError(e, what)
        if request == uapi.VFIO_GET_API_VERSION:
            return uapi.VFIO_API_VERSION
        if request == uapi.VFIO_CHECK_EXTENSION:
            return 1 if arg == uapi.VFIO_TYPE1v2_IOMMU else 0
        if request == uapi.VFIO_GROUP_GET_STATUS:
            arg.flags = uapi.VFIO_GROUP_FLAGS_VIABLE | (uapi.VFIO_GROUP_FLAGS_CONTAINER_SET if name in self.attached else 0)
            return 0
        if request == uapi.VFIO_GROUP_SET_CONTAINER:
            if name in self.attached:
                fail(errno.EINVAL)
            self.attached[name] = arg.value
            self.log.append(f"set container {name}")
            return 0
        if request == uapi.VFIO_GROUP_UNSET_CONTAINER:
            if name not in self.attached:
                fail(errno.EINVAL)
            if name in self.devices.values():
                fail(errno.EBUSY)
            self.log.append(f"unset container {name}")
            self._detach(name)
            return 0
        if request == uapi.VFIO_SET_IOMMU:
            if fd not in self.attached.values() or fd in self.iommu:
                fail(errno.EINVAL)
            self.iommu[fd] = arg
            return 0
        if request == uapi.VFIO_IOMMU_GET_INFO:
            if fd not in self.iommu:
                fail(errno.EINVAL)
            hdr = uapi.vfio_iommu_type1_info.from_buffer(arg)
            hdr.flags, hdr.iova_pgsizes, hdr.cap_offset = 0, 0x1000, 0
            return 0
        if request == uapi.VFIO_IOMMU_MAP_DMA:
            if fd not in self.iommu:
                fail(errno.EINVAL)
            self.maps[fd][arg.iova] = arg.size
            return 0
        if request == uapi.VFIO_IOMMU_UNMAP_DMA:
            if fd not in self.iommu:            # type1 gone with the last group
                fail(errno.EINVAL)
            arg.size = self.maps[fd].pop(arg.iova, 0)
            self.log.append(f"unmap {arg.iova:#x}")
            return 0
        if request == uapi.VFIO_GROUP_GET_DEVICE_FD:
            if self.iommu.get(self.attached.get(name)) is None:
                fail(errno.EINVAL)
            dfd = os.open("/dev/null", os.O_RDWR | os.O_CLOEXEC)
            self.kind[dfd] = ("device", bytes(arg).rstrip(b"\0").decode())
            self.devices[dfd] = name
            return dfd
        if request == uapi.VFIO_DEVICE_GET_INFO:
            hdr = uapi.vfio_device_info.from_buffer(arg)
            hdr.flags, hdr.num_regions, hdr.num_irqs, hdr.cap_offset = uapi.VFIO_DEVICE_FLAGS_PCI, 9, 5, 0
            return 0
        raise AssertionError(f"unexpected ioctl {request:#x} ({what})")


GROUP_OF = {"0000:00:10.0": "/dev/vfio/7", "0000:00:10.1": "/dev/vfio/7", "0000:00:04.0": "/dev/vfio/4"}


@pytest.fixture
def kernel(monkeypatch):
    k = FakeType1()
    monkeypatch.setattr(uapi, "ioctl", k.ioctl)
    monkeypatch.setattr(os, "open", k.open)
    monkeypatch.setattr(os, "close", k.close)
    monkeypatch.setattr(vfio, "group_path_of", lambda bdf: GROUP_OF[bdf])
    return k


def test_leaving_with_dma_mapped_unmaps_before_the_group_leaves(kernel):
    with vfio.open_pci_device("0000:00:04.0", interface="container") as dev:
        m = dev.dma.alloc(0x2000)
        cfd = dev.container.fd
        assert kernel.maps[cfd] == {m.iova: 0x2000}
    assert not m.mapped and kernel.kind == {} and kernel.attached == {}
    assert kernel.log == ["set container 4", "close device 0000:00:04.0", f"unmap {m.iova:#x}",
                          "unset container 4", "close group 4", "close container vfio"]


def test_callers_container_loses_mappings_and_model_with_its_last_group(kernel):
    with vfio.Container() as c:
        dev = vfio.open_pci_device("0000:00:04.0", container=c)
        m = c.alloc(0x1000)
        dev.close()
        assert c.fd >= 0 and c.groups == [] and c.iommu_type is None and not m.mapped
        assert m.unmap() == 0
        with vfio.open_pci_device("0000:00:04.0", container=c) as dev:
            assert c.iommu_type == uapi.VFIO_TYPE1v2_IOMMU
            m2 = c.alloc(0x1000)
    assert kernel.kind == {} and not m2.mapped


def test_two_devices_of_one_group_share_it_until_the_last_closes(kernel):
    first = vfio.open_pci_device("0000:00:10.0", interface="container")
    with pytest.raises(VfioError) as ei:
        vfio.open_pci_device("0000:00:10.1", interface="container")
    assert ei.value.errno == errno.EBUSY and "container=" in str(ei.value)
    second = vfio.open_pci_device("0000:00:10.1", container=first.container)
    assert second.group is first.group and first.group.users == 2
    m = first.dma.alloc(0x1000)
    first.close()
    assert second.group.fd >= 0 and second.container.fd >= 0 and m.mapped
    group, container = second.group, second.container
    second.close()
    assert group.fd == -1 and container.fd == -1 and not m.mapped and kernel.kind == {}
    assert kernel.log[-5:] == ["close device 0000:00:10.1", f"unmap {m.iova:#x}", "unset container 7",
                               "close group 7", "close container vfio"]


def test_failed_open_leaves_nothing_open(kernel):
    with pytest.raises(KeyError):
        vfio.open_pci_device("0000:00:1f.0", interface="container")
    held = vfio.Group("/dev/vfio/4")
    try:
        with pytest.raises(VfioError) as ei:
            vfio.open_pci_device("0000:00:04.0", interface="container")
        assert ei.value.errno == errno.EBUSY
        assert [k for k in kernel.kind.values() if k[0] != "group"] == []
    finally:
        held.close()
    assert kernel.kind == {}


class FakeSpace(DmaSpace):
    def iova_ranges(self):
        return [(0, (1 << 32) - 1)]

    min_page_size = 4096

    def _map(self, vaddr, iova, size, readable, writable):
        pass

    def _unmap(self, iova, size):
        return size


def test_dma_mapping_read_write_view_and_bounds():
    space = FakeSpace()
    m = space.alloc(0x2000)
    assert len(m) == 0x2000 and m.mapped
    m.write(0x1ff0, b"0123456789abcdef")
    assert m.read(0x1ff0, 16) == b"0123456789abcdef" == m.buffer.read(0x1ff0, 16)
    v = m.view()
    assert len(v) == 0x2000 and bytes(v[0x1ff0:0x1ff4]) == b"0123"
    v.release()
    for off, n in ((0x2000, 1), (0x1ff1, 16), (-1, 1)):
        with pytest.raises(RegionAccessError) as ei:
            m.read(off, n)
        assert f"{m.iova:#x}" in str(ei.value)
    with pytest.raises(RegionAccessError):
        m.write(0x1fff, b"ab")
    assert m.unmap() == 0x2000 and not m.mapped and m.unmap() == 0
    with pytest.raises(RegionAccessError):
        m.read(0, 1)                       # alloc'ed memory went with the mapping
    with pytest.raises(ValueError):
        space.unmap(m)


def test_bus_master_accessors_on_a_replayed_device(vfio_replay_device):
    dev = vfio_replay_device("records/edu.vfiorec")
    dev.disable_bus_master()
    assert not dev.bus_master
    dev.enable_bus_master()
    assert dev.bus_master and dev.config.read16(R.COMMAND) & R.COMMAND_MASTER
    dev.disable_bus_master()
    assert not dev.bus_master and not dev.config.read16(R.COMMAND) & R.COMMAND_MASTER


def test_enable_irq_without_vectors_is_refused_before_set_irqs(vfio_replay_device, monkeypatch):
    dev = vfio_replay_device("records/edu.vfiorec")
    assert dev.irq_info(uapi.VFIO_PCI_MSIX_IRQ_INDEX).count == 0
    calls = []
    monkeypatch.setattr(dev.backend, "set_irqs", lambda b: calls.append(b))
    with pytest.raises(VfioError) as ei:
        dev.enable_irq(uapi.VFIO_PCI_MSIX_IRQ_INDEX)
    assert ei.value.errno == errno.EINVAL and "(MSI-X)" in str(ei.value) and "no vectors" in str(ei.value)
    with pytest.raises(VfioError) as ei:
        dev.enable_irq(uapi.VFIO_PCI_MSI_IRQ_INDEX, count=2)
    assert ei.value.errno == errno.EINVAL and "the device has 1" in str(ei.value)
    assert calls == []
