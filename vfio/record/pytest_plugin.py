"""pytest plugin: captured devices as fixtures.

Registered through the ``pytest11`` entry point ``vfio``, so any test suite
with this package installed can write::

    def test_my_driver(vfio_replay_device):
        dev = vfio_replay_device("records/edu.vfiorec")   # a vfio.device.Device
        assert dev.region(0).read32(0) == 0x010000ed
        dev.backend.fire(0)                                # play the device raising INTx

Relative paths are taken from pytest's rootdir.  Every device handed out is
closed when the test ends.  ``vfio_record`` loads a file as a
:class:`~vfio.record.format.DeviceRecord` for tests that inspect or edit one.
"""

from __future__ import annotations

import os

import pytest


def _resolve(request, path) -> str:
    path = os.fspath(path)
    if os.path.isabs(path):
        return path
    return os.path.join(str(request.config.rootpath), path)


@pytest.fixture
def vfio_replay_device(request):
    """Factory: ``vfio_replay_device(path_or_record, name=None)`` -> Device over a ReplayBackend."""
    from .format import DeviceRecord
    from .replay import open_replay
    opened = []

    def factory(source, name: str | None = None):
        if not isinstance(source, DeviceRecord):
            source = _resolve(request, source)
        dev = open_replay(source, name=name)
        opened.append(dev)
        return dev

    yield factory
    while opened:
        opened.pop().close()


@pytest.fixture
def vfio_record(request):
    """Factory: ``vfio_record(path)`` -> the parsed DeviceRecord."""
    from .format import load
    return lambda path: load(_resolve(request, path))
