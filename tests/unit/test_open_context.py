"""The IOMMU context opens devices: Container.open_device hands the device its DMA
space, group and container in the constructor; the replay backend says REPLAY.

Uses the stand-in type1 kernel of test_api_lifecycle (os.open/os.close/uapi.ioctl).
"""

from __future__ import annotations

import errno
import os

import pytest

import vfio
from vfio import Interface, uapi
from vfio.errors import VfioError
from vfio.record.replay import open_replay

from .test_api_lifecycle import kernel  # noqa: F401  (the fixture: the stand-in type1 kernel)

from tests.paths import RECORDS


def test_container_opens_its_device_and_hands_it_what_it_owns(kernel):
    with vfio.Container() as c:
        with c.open_device("00:04.0", group_path="/dev/vfio/4") as dev:
            assert dev.interface is Interface.CONTAINER and dev.interface == "container"
            assert dev.dma is c and dev.container is c and dev.group.container is c
            assert dev.ioas is None and dev.iommufd is None
            assert c.iommu_type == uapi.VFIO_TYPE1v2_IOMMU and c.groups == [dev.group]
            # a second device of the group comes through the same group
            with c.open_device("0000:00:04.0", group_path="/dev/vfio/4") as again:
                assert again.group is dev.group and dev.group.users == 2
            group = dev.group
        # the group opened for the device left the container and closed with it
        assert group.fd == -1 and c.groups == [] and c.fd >= 0
    assert kernel.kind == {}
    assert kernel.log[-3:] == ["unset container 4", "close group 4", "close container vfio"]


def test_container_open_device_failure_closes_the_group_it_opened(kernel):
    held = vfio.Group("/dev/vfio/4")
    try:
        with vfio.Container() as c:
            with pytest.raises(VfioError) as ei:
                c.open_device("0000:00:04.0", group_path="/dev/vfio/4")
            assert ei.value.errno == errno.EBUSY and c.groups == []
    finally:
        held.close()
    assert kernel.kind == {}


def test_interface_is_an_enum_equal_to_the_old_strings():
    assert [i.value for i in Interface] == ["container", "cdev", "noiommu", "replay", "model"]
    assert Interface("cdev") is Interface.CDEV and str(Interface.NOIOMMU) == "noiommu"
    assert f"{Interface.REPLAY}" == "replay"


def test_replay_device_is_given_its_interface():
    with open_replay(os.path.join(RECORDS, "edu.vfiorec")) as dev:
        assert dev.interface is Interface.REPLAY and dev.interface == "replay"
        assert dev.dma is None and dev.group is None and dev.container is None
