"""The DMA map/unmap hot path keeps the general path's wire format, errors and guarantees.

``Container._map/_unmap`` and ``IOAS._map/_unmap`` fill reusable argument
structs with one ``pack_into`` and build their error text only on failure.
Checked here on the host, with ``vfio.uapi.ioctl`` replaced by a recorder:
the bytes the kernel gets are those of the struct built field by field; a
refused map leaves no IOVA allocated and no mapping recorded; errors keep the
kernel's errno and the text naming the request, the IOVA and the context; a
closed context says EBADF as before; a nested call never shares a struct.
"""

from __future__ import annotations

import ctypes
import errno
import os

import pytest

import vfio
from vfio import uapi
from vfio.container import Container, IommuInfo
from vfio.dma import IoctlArgs
from vfio.errors import InvalidValue, VfioError
from vfio.iommufd import IOAS, IommuFD

RANGES = ((0, 0xFEDFFFFF), (0xFEF00000, 0x7FFFFFFFFF))


class Type1OnDevNull(Container):
    """A type1 container whose IOMMU model is taken as set; ioctls go to the recorder."""

    def __init__(self):     # the real one opens /dev/vfio/vfio
        super(Container, self).__init__()
        self.path, self.groups = "/dev/vfio/vfio", []
        self.fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        self.iommu_type = uapi.VFIO_TYPE1v2_IOMMU
        self._info = IommuInfo(0, 0x1000, RANGES, None, None)

    def iova_ranges(self) -> list:
        return list(RANGES)


class IommufdOnDevNull(IommuFD):
    def __init__(self):     # the real one opens /dev/iommu
        self.path, self._objects = "/dev/iommu", []
        self.fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)


class IoasOnDevNull(IOAS):
    def __init__(self, iommufd):
        super().__init__(iommufd, 7)
        self._ranges, self.alignment = list(RANGES), 0x1000

    def iova_ranges(self) -> list:
        return list(RANGES)


class Recorder:
    """Stands in for uapi.ioctl: records (request, bytes sent), fails on demand, answers UNMAP."""

    def __init__(self):
        self.calls, self.args, self.fail, self.during = [], [], {}, None

    def __call__(self, fd, request, arg=0, what=""):
        self.calls.append((request, bytes(arg)))
        self.args.append(arg)
        if self.during is not None:
            hook, self.during = self.during, None
            hook()
        if request in self.fail:
            raise VfioError(self.fail[request], what or f"ioctl {request:#x}")
        return 0


@pytest.fixture
def rec(monkeypatch):
    r = Recorder()
    monkeypatch.setattr(uapi, "ioctl", r)
    return r


@pytest.fixture
def container():
    c = Type1OnDevNull()
    yield c
    c._mappings.clear()
    c.close()


@pytest.fixture
def ioas():
    fd = IommufdOnDevNull()
    space = IoasOnDevNull(fd)
    yield space
    space._mappings.clear()
    fd.close()


def test_container_sends_the_structs_the_general_path_builds(rec, container):
    with vfio.DmaBuffer(0x10000) as buf:
        for readable, writable in ((True, True), (True, False), (False, True)):
            m = container.map(buf, readable=readable, writable=writable)
            container.unmap(m)
            flags = (uapi.VFIO_DMA_MAP_FLAG_READ if readable else 0) | (uapi.VFIO_DMA_MAP_FLAG_WRITE if writable else 0)
            want_map = uapi.vfio_iommu_type1_dma_map(ctypes.sizeof(uapi.vfio_iommu_type1_dma_map), flags,
                                                     buf.vaddr, 0x100000, 0x10000)
            want_unmap = uapi.vfio_iommu_type1_dma_unmap(ctypes.sizeof(uapi.vfio_iommu_type1_dma_unmap), 0,
                                                         0x100000, 0x10000)
            assert rec.calls[-2:] == [(uapi.VFIO_IOMMU_MAP_DMA, bytes(want_map)),
                                      (uapi.VFIO_IOMMU_UNMAP_DMA, bytes(want_unmap))]


def test_ioas_sends_the_structs_the_general_path_builds(rec, ioas):
    with vfio.DmaBuffer(0x3000) as buf:
        m = ioas.map(buf, iova=0x200000, writable=False)
        assert ioas.unmap(m) == 0x3000          # the recorder leaves length as sent
        flags = uapi.IOMMU_IOAS_MAP_FIXED_IOVA | uapi.IOMMU_IOAS_MAP_READABLE
        want_map = uapi.iommu_ioas_map(size=ctypes.sizeof(uapi.iommu_ioas_map), flags=flags, ioas_id=7,
                                       user_va=buf.vaddr, length=0x3000, iova=0x200000)
        want_unmap = uapi.iommu_ioas_unmap(size=ctypes.sizeof(uapi.iommu_ioas_unmap), ioas_id=7,
                                           iova=0x200000, length=0x3000)
        assert rec.calls == [(uapi.IOMMU_IOAS_MAP, bytes(want_map)), (uapi.IOMMU_IOAS_UNMAP, bytes(want_unmap))]


@pytest.mark.parametrize("kind", ["container", "ioas"])
def test_refused_map_leaves_no_iova_and_no_mapping(rec, container, ioas, kind):
    space = container if kind == "container" else ioas
    req = uapi.VFIO_IOMMU_MAP_DMA if kind == "container" else uapi.IOMMU_IOAS_MAP
    with vfio.DmaBuffer(0x10000) as buf:
        first = space.map(buf)
        space.unmap(first)                      # the allocator now hands 0x100000 out on its fast path
        rec.fail[req] = errno.ENOMEM
        with pytest.raises(VfioError) as ei:
            space.map(buf)
        assert ei.value.errno == errno.ENOMEM
        want = ("VFIO_IOMMU_MAP_DMA iova 0x100000 size 0x10000 on container /dev/vfio/vfio" if kind == "container"
                else "IOMMU_IOAS_MAP ioas 7 iova 0x100000 length 0x10000 on /dev/iommu")
        assert ei.value.what == want
        assert str(ei.value) == f"[Errno {errno.ENOMEM}] {want}: {os.strerror(errno.ENOMEM)} [ENOMEM]"
        assert space._mappings == [] and space.allocator._used == {} and space.allocator._lazy is None
        with pytest.raises(VfioError):
            space.map(buf, iova=0x300000)       # a caller-chosen IOVA is given back too
        del rec.fail[req]
        again = space.map(buf, iova=0x300000)
        assert again.iova == 0x300000 and space.map(buf).iova == 0x100000
        space.unmap_all()
        assert space._mappings == [] and space.allocator._used == {}


@pytest.mark.parametrize("kind", ["container", "ioas"])
def test_refused_unmap_still_forgets_the_mapping_and_names_it(rec, container, ioas, kind):
    space = container if kind == "container" else ioas
    req = uapi.VFIO_IOMMU_UNMAP_DMA if kind == "container" else uapi.IOMMU_IOAS_UNMAP
    with vfio.DmaBuffer(0x2000) as buf:
        m = space.map(buf)
        rec.fail[req] = errno.EINVAL
        with pytest.raises(VfioError) as ei:
            space.unmap(m)
        assert ei.value.errno == errno.EINVAL
        assert ei.value.what == ("VFIO_IOMMU_UNMAP_DMA iova 0x100000 size 0x2000 on container /dev/vfio/vfio"
                                 if kind == "container" else "IOMMU_IOAS_UNMAP ioas 7 iova 0x100000 length 0x2000 on /dev/iommu")
        assert not m.mapped and space.allocator._used == {}
        with pytest.raises(InvalidValue, match="IOVA 0x100000 is not mapped in this space"):
            space.unmap(m)
        assert m.unmap() == 0


def test_closed_contexts_say_ebadf_as_before(rec, container, ioas):
    container.close()
    with pytest.raises(VfioError, match=r"use on container /dev/vfio/vfio: closed") as ei:
        container.map_dma(0x1000, 0x100000, 0x1000)
    assert ei.value.errno == errno.EBADF
    ioas.iommufd.close()
    with pytest.raises(VfioError, match="iommufd /dev/iommu is closed") as ei:
        ioas._map(0x1000, 0x100000, 0x1000, True, True)
    assert ei.value.errno == errno.EBADF
    with pytest.raises(VfioError, match="iommufd /dev/iommu is closed"):
        ioas._unmap(0x100000, 0x1000)
    assert rec.calls == []


def test_values_too_wide_for_a_field_are_refused_not_truncated(rec, container, ioas):
    # a ctypes struct would keep only the low 64 bits and map somewhere else
    for call in (lambda: container.map_dma(0x1000, (1 << 64) + 0x100000, 0x1000),
                 lambda: container.unmap_dma(0x100000, 1 << 64),
                 lambda: ioas._map(0x1000, (1 << 64) + 0x100000, 0x1000, True, True),
                 lambda: ioas._unmap(-1, 0x1000)):
        with pytest.raises(InvalidValue, match="does not fit its unsigned fields"):
            call()
    assert rec.calls == []
    with pytest.raises(InvalidValue):
        container.unmap_dma("0x100000", 0x1000)


def test_a_nested_call_gets_its_own_struct(rec, container):
    # a second map while the first one's struct is in the kernel (another thread, a signal
    # handler) must not overwrite it
    rec.during = lambda: container.map_dma(0x2000, 0x500000, 0x2000)
    container.map_dma(0x1000, 0x400000, 0x1000)
    outer, inner = rec.args
    assert outer is not inner
    assert (outer.vaddr, outer.iova, outer.size) == (0x1000, 0x400000, 0x1000)
    assert (inner.vaddr, inner.iova, inner.size) == (0x2000, 0x500000, 0x2000)


def test_ioctl_args_layout_is_checked_against_the_ctypes_struct():
    class Padded(ctypes.Structure):
        _fields_ = [("a", ctypes.c_uint32), ("b", ctypes.c_uint64)]    # 4 bytes of padding after a

    class Signed(ctypes.Structure):
        _fields_ = [("a", ctypes.c_int32)]
    for bad in (Padded, Signed):
        with pytest.raises(TypeError):
            IoctlArgs(bad)
    a = IoctlArgs(uapi.iommu_ioas_map)
    st = a.new()
    a.pack_into(st, 0, 40, 1, 2, 0, 3, 4, 5)
    assert (st.size, st.flags, st.ioas_id, st.user_va, st.length, st.iova) == (40, 1, 2, 3, 4, 5)
