"""What tools/vfio-harness says about its guest's devices, for tests and fixtures.

The harness exports ``VFIO_HARNESS_BDFS="name=bdf[,bdf] ..."``: which PCI
functions are its device ``name``.  IDs alone cannot say: edu-mf's two functions
are edus (1234:11e8) like edu, and nvme-sriov's PF (and the VFs it makes) are
QEMU nvme controllers (1b36:0010) like nvme.
"""

from __future__ import annotations

import os


def harness_bdfs(name: str) -> list[str] | None:
    """The BDFs the harness found for its device ``name``: ``[]`` if it found none,
    None where the harness did not say (an older harness or no guest: match by ID)."""
    value = os.environ.get("VFIO_HARNESS_BDFS")
    if value is None:
        return None
    for entry in value.split():
        n, _, bdfs = entry.partition("=")
        if n == name:
            return bdfs.split(",")
    return []
