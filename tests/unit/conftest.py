"""Fixtures shared by the host unit tests."""

from __future__ import annotations

import os
import shutil

import pytest

#: The captured sysfs tree of a q35 guest (fixtures/sysfs/README.md).
GUEST = os.path.join(os.path.dirname(__file__), "..", "..", "fixtures", "sysfs", "q35-guest")


@pytest.fixture
def tree(tmp_path):
    """A writable copy of the q35 guest's captured sysfs tree; its path."""
    dst = tmp_path / "root"
    shutil.copytree(GUEST, dst, symlinks=True)
    return str(dst)
