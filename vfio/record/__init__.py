"""Device record files: describe a device once, test against it without the hardware.

* :mod:`vfio.record.format` -- the file format (``records/FORMAT.md``) and its codec.
* :mod:`vfio.record.replay` -- :class:`ReplayBackend`, a record file served as a device.
* :mod:`vfio.record.capture` -- record files from a VFIO device or from sysfs.
* :mod:`vfio.record.cassette` -- a program's session with a device recorded and replayed.
* :mod:`vfio.record.pytest_plugin` -- the ``vfio_replay_device`` and ``vfio_cassette`` fixtures.
"""

from .format import (DeviceRecord, RecordFormatError, MappedRecord, open_record_file, parse, write, load, save)

__all__ = ["DeviceRecord", "RecordFormatError", "MappedRecord", "open_record_file", "parse", "write", "load", "save"]
