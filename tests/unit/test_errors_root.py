"""One error root (vfio.Error) under every toolkit error, with the built-in bases kept;
closed fds raise VfioError(EBADF); one owned-fd base; one argsz retry loop."""

import errno
import importlib
import inspect
import os
import pkgutil
import struct

import pytest

import vfio
from vfio import uapi
from vfio._resource import OwnedFd
from vfio.device import KernelBackend
from vfio.dma import DmaBuffer, IovaAllocator
from vfio.errors import FeatureMissing, IovaExhausted, IovaNotAllocated, VectorOutOfRange
from vfio.irq import EventFd


def _package_modules():
    mods = [vfio]
    for info in pkgutil.walk_packages(vfio.__path__, "vfio."):
        mods.append(importlib.import_module(info.name))
    return mods


def test_every_exception_class_of_the_package_derives_from_vfio_error():
    found = []
    for mod in _package_modules():
        for _, cls in inspect.getmembers(mod, inspect.isclass):
            if cls.__module__ != mod.__name__ or not issubclass(cls, BaseException):
                continue
            if issubclass(cls, Warning):            # warnings are not errors (NoIommuWarning)
                continue
            if not issubclass(cls, Exception):      # control flow (the CLIs' StdoutClosed)
                continue
            found.append(cls)
    names = {c.__name__ for c in found}
    # the walk sees the classes this test is about (it is not vacuously true)
    assert {"VfioError", "HostError", "AssignmentFailed", "PciIdsError", "ConfigSpaceError",
            "StateMismatchError", "RegionAccessError", "IovaExhausted", "WatchError",
            "RecordFormatError"} <= names
    assert [c.__qualname__ for c in found if not issubclass(c, vfio.Error)] == []


@pytest.mark.parametrize("name, builtin", [
    ("vfio.errors.VfioError", OSError),
    ("vfio.errors.RegionAccessError", ValueError),
    ("vfio.errors.InvalidValue", ValueError),
    ("vfio.errors.IovaExhausted", MemoryError),
    ("vfio.errors.IovaNotAllocated", KeyError),
    ("vfio.errors.FeatureMissing", KeyError),
    ("vfio.errors.VectorOutOfRange", IndexError),
    ("vfio.host.sysfs.HostError", ValueError),
    ("vfio.host.assign.AssignmentFailed", RuntimeError),
    ("vfio.host.watch.WatchError", RuntimeError),
    ("vfio.pci.ids.PciIdsError", ValueError),
    ("vfio.pci.config.ConfigSpaceError", ValueError),
    ("vfio.pci.vconfig.StateMismatchError", ValueError),
    ("vfio._value.FrozenInstanceError", AttributeError),
])
def test_each_error_keeps_the_builtin_base_callers_catch(name, builtin):
    mod, cls = name.rsplit(".", 1)
    c = getattr(importlib.import_module(mod), cls)
    assert issubclass(c, vfio.Error) and issubclass(c, builtin)


def test_error_root_is_exported_from_the_package_face():
    assert "Error" in vfio.__all__ and vfio.Error is vfio.errors.Error


def test_closed_eventfd_is_ebadf_naming_it():
    e = EventFd("edu irq 1.0")
    e.close()
    e.close()                                    # idempotent
    assert e.closed and e.fd == -1
    for op in (e.fileno, e.read, e.signal):
        with pytest.raises(vfio.VfioError, match="eventfd edu irq 1.0 is closed") as ei:
            op()
        assert ei.value.errno == errno.EBADF


def test_iova_exhaustion_and_unknown_free_are_toolkit_errors():
    a = IovaAllocator([(0x100000, 0x1fffff)])
    a.alloc(0x100000)
    with pytest.raises(IovaExhausted, match="no free IOVA range of 0x1000 bytes") as ei:
        a.alloc(0x1000)
    assert isinstance(ei.value, MemoryError) and isinstance(ei.value, vfio.Error)
    with pytest.raises(IovaNotAllocated, match="0x180000") as ei:
        a.free(0x180000)
    assert isinstance(ei.value, KeyError)


def test_passthrough_and_msix_lookups_are_toolkit_errors():
    from vfio.pci.msix import MsixTable
    with pytest.raises(VectorOutOfRange):
        MsixTable(2).message(5)
    assert issubclass(FeatureMissing, KeyError)


def test_host_error_keeps_the_errno_of_a_failed_system_call(tmp_path):
    from vfio.host.assign import StateFile
    from vfio.host.sysfs import HostError
    d = tmp_path / "state.json"
    d.mkdir()                                    # a directory where the state file should be
    with pytest.raises(HostError, match="cannot read state file") as ei:
        StateFile(str(d), readonly=True).load()
    assert ei.value.errno == errno.EISDIR
    assert HostError("no such device").errno is None


def test_owned_fd_close_is_idempotent_and_context_managed():
    r, w = os.pipe()
    os.close(w)
    with KernelBackend(r, "pipe") as kb:
        assert isinstance(kb, OwnedFd) and not kb.closed
    assert kb.closed and kb.fd == -1
    kb.close()
    with pytest.raises(OSError):
        os.fstat(r)                              # really closed
    with pytest.raises(vfio.VfioError) as ei:
        kb.pread(0, 4)
    assert ei.value.errno == errno.EBADF
    for cls in (vfio.Container, vfio.Group, EventFd, KernelBackend):
        assert issubclass(cls, OwnedFd)


def test_dma_buffer_close_with_a_live_view_keeps_the_memory_valid():
    b = DmaBuffer(4096)
    b.write(0, b"abcd")
    v = b.view()
    b.close()                                    # used to raise BufferError here
    assert b.mem is None
    assert bytes(v[:4]) == b"abcd"              # the mapping lives until the view goes
    v.release()


def _answers(*sizes):
    """A fake info call: answers with argsz taken from ``sizes`` in turn."""
    calls = []

    def call(argsz):
        calls.append(argsz)
        want = sizes[min(len(calls) - 1, len(sizes) - 1)]
        buf = bytearray(max(argsz, 16))
        struct.pack_into("<I", buf, 0, want)
        return bytes(buf)
    return call, calls


def test_variable_info_retries_with_the_kernels_argsz():
    fixed = uapi.vfio_device_info
    n = __import__("ctypes").sizeof(fixed)
    call, calls = _answers(n + 40, n + 40)
    buf = uapi.variable_info(call, fixed, "GET_INFO")
    assert calls == [n, n + 40] and len(buf) == n + 40


def test_variable_info_is_bounded():
    fixed = uapi.vfio_device_info
    call, calls = _answers(100, 200, 300, 400, 500)
    with pytest.raises(vfio.VfioError, match="argsz kept growing") as ei:
        uapi.variable_info(call, fixed, "GET_INFO")
    assert ei.value.errno == errno.EAGAIN and len(calls) == 4
    call, _ = _answers(1 << 30)
    with pytest.raises(vfio.VfioError, match="implausible argsz") as ei:
        uapi.variable_info(call, fixed, "GET_INFO")
    assert ei.value.errno == errno.EOVERFLOW
