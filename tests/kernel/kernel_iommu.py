"""The IOMMU facts the real-kernel tests check the toolkit against, read from the
kernel's own statement rather than assumed per architecture.

``/sys/kernel/iommu_groups/N/reserved_regions`` (one ``start end type`` line per
region, inclusive, hex) lists the IOVA windows no mapping may use.  The ``msi``
ones are where the interrupt controller's doorbell is reached: x86's
0xfee00000-0xfeefffff interrupt window (IOMMU_RESV_MSI), or on arm64 the window
arm-smmu-v3 reserves in every domain to map the GIC ITS doorbell into
(IOMMU_RESV_SW_MSI, 0x8000000-0x80fffff; sysfs names both kinds ``msi``).  The
container's VFIO_IOMMU_TYPE1_INFO_CAP_IOVA_RANGE and iommufd's
IOMMU_IOAS_IOVA_RANGES must leave exactly these out.
"""

from __future__ import annotations

import os


def reserved_regions(bdf: str) -> list[tuple[int, int, str]]:
    """(start, end, type) of every reserved region of ``bdf``'s IOMMU group."""
    path = os.path.join(os.path.realpath(f"/sys/bus/pci/devices/{bdf}/iommu_group"), "reserved_regions")
    with open(path) as f:
        rows = [line.split() for line in f if line.strip()]
    return [(int(s, 16), int(e, 16), kind) for s, e, kind in rows]


def msi_windows(bdf: str) -> list[tuple[int, int]]:
    """The inclusive MSI windows the kernel reserves for ``bdf``; at least one (an IOMMU
    that translates MSI writes always reserves where they land)."""
    wins = [(s, e) for s, e, kind in reserved_regions(bdf) if kind == "msi"]
    assert wins, f"{bdf}: no msi region in its IOMMU group's reserved_regions: {reserved_regions(bdf)}"
    return wins


def assert_msi_holes(bdf: str, ranges) -> list[tuple[int, int]]:
    """``ranges`` (inclusive usable IOVA ranges, as the toolkit read them) leave out each
    of ``bdf``'s MSI windows and nothing next to it: the address right below and right
    above a window is usable unless another reserved region claims it.  Returns the
    windows."""
    shown = [(hex(s), hex(e)) for s, e in ranges]
    regions = reserved_regions(bdf)
    wins = msi_windows(bdf)
    for start, end in wins:
        assert not any(s <= end and e >= start for s, e in ranges), \
            f"usable ranges {shown} overlap the MSI window {start:#x}-{end:#x}"
        for edge, where in ((start - 1, "below"), (end + 1, "above")):
            if any(s <= edge <= e for s, e, _ in regions):
                continue
            assert any(s <= edge <= e for s, e in ranges), \
                f"{edge:#x} (right {where} the MSI window {start:#x}-{end:#x}) is not usable: {shown}"
    return wins
