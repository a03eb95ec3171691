"""Fixtures shared by the host unit tests."""

from __future__ import annotations

import shutil

import pytest
from tests.paths import GUEST_TREE

#: The captured sysfs tree of a q35 guest (fixtures/sysfs/README.md).
GUEST = GUEST_TREE


@pytest.fixture
def tree(tmp_path):
    """A writable copy of the q35 guest's captured sysfs tree; its path."""
    dst = tmp_path / "root"
    shutil.copytree(GUEST, dst, symlinks=True)
    return str(dst)
