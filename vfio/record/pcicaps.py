"""Walking the PCI capability lists of a captured config space.

Config space links its capabilities in two lists: the standard one starts at
the pointer at 0x34 (when STATUS bit 4 says there is a list) and each entry is
``ID, next``; the extended one (PCIe, 4 KiB config space) starts at 0x100 and
each entry is a dword ``ID:16 version:4 next:12``.  Replay needs the positions
(the ID/next bytes are read-only) and capture needs the MSI/MSI-X/PCIe entries
(IRQ counts).  Both walks are bounded and stop with a ValueError naming the
offset on a loop or a pointer outside config space.
"""

from __future__ import annotations

import struct
from typing import Iterator

PCI_STATUS = 0x06
PCI_STATUS_CAP_LIST = 0x10
PCI_CAPABILITY_LIST = 0x34
PCI_STD_HEADER_END = 0x40
PCI_CFG_SPACE_SIZE = 0x100
PCI_CAP_ID_MSI = 0x05
PCI_CAP_ID_EXP = 0x10
PCI_CAP_ID_MSIX = 0x11

_MAX_STD = (PCI_CFG_SPACE_SIZE - PCI_STD_HEADER_END) // 4       # 48 entries fit
_MAX_EXT = (4096 - PCI_CFG_SPACE_SIZE) // 4                      # 960 entries fit


def iter_std_caps(cfg: bytes) -> Iterator[tuple[int, int]]:
    """(cap_id, offset) of each standard capability, in list order."""
    if len(cfg) < PCI_STD_HEADER_END or not cfg[PCI_STATUS] & PCI_STATUS_CAP_LIST:
        return
    pos = cfg[PCI_CAPABILITY_LIST] & 0xFC
    seen = set()
    while pos:
        if pos in seen or len(seen) >= _MAX_STD:
            raise ValueError(f"config space: capability list loops at {pos:#x}")
        if not PCI_STD_HEADER_END <= pos <= min(len(cfg), PCI_CFG_SPACE_SIZE) - 2:
            raise ValueError(f"config space: capability pointer {pos:#x} outside 0x40-0xff")
        seen.add(pos)
        yield cfg[pos], pos
        pos = cfg[pos + 1] & 0xFC


def iter_ext_caps(cfg: bytes) -> Iterator[tuple[int, int]]:
    """(cap_id, offset) of each extended capability (none in a 256-byte config space)."""
    pos = PCI_CFG_SPACE_SIZE
    seen = set()
    while len(cfg) >= pos + 4 > PCI_CFG_SPACE_SIZE:
        hdr = struct.unpack_from("<I", cfg, pos)[0]
        if hdr in (0, 0xFFFFFFFF):
            return
        if pos in seen or len(seen) >= _MAX_EXT:
            raise ValueError(f"config space: extended capability list loops at {pos:#x}")
        seen.add(pos)
        yield hdr & 0xFFFF, pos
        pos = (hdr >> 20) & 0xFFC
        if pos and pos < PCI_CFG_SPACE_SIZE:
            raise ValueError(f"config space: extended capability pointer {pos:#x} below 0x100")
        if not pos:
            return
