"""A device without a migration driver (QEMU's edu on plain vfio-pci): the migration API
says so with the documented error, the kernel's errno kept, and changes nothing."""

from __future__ import annotations

import errno
import io

import pytest

import vfio
from vfio.migration import MigrationUnsupported

pytestmark = pytest.mark.kernel


@pytest.mark.parametrize("interface", ["container", pytest.param("cdev", marks=pytest.mark.cdev)])
def test_edu_has_no_migration(edu_bdf, interface):
    from vfio.pci.passthrough import PassthroughDevice
    with vfio.open_pci_device(edu_bdf, interface=interface) as dev:
        mig = dev.migration
        assert not mig.supported
        with pytest.raises(MigrationUnsupported) as ei:
            mig.flags
        e = ei.value
        assert e.errno == errno.ENOTTY and isinstance(e, OSError) and isinstance(e, vfio.Error)
        assert edu_bdf in str(e) and "no migration driver" in str(e)
        stream = io.BytesIO()
        with pytest.raises(MigrationUnsupported):
            mig.save(stream)
        assert stream.getvalue() == b""
        with PassthroughDevice(dev) as pt:
            with pytest.raises(MigrationUnsupported):
                pt.save_migration(stream)
        with dev.region(0).map() as bar:              # the device is as it was
            assert bar.read32(0) == 0x010000ED
