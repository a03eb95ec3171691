"""Test oracle: the Region and Expansion ROM lines of ``lspci -vvv`` text, parsed.

Used by the host tests (on lspci output captured in a guest) and by the guest
tests (on lspci run there), so both compare vfio-inspect with one reading of lspci.
"""

from __future__ import annotations

import re

_REGION = re.compile(r"\tRegion (\d): (?:I/O ports at ([0-9a-f]+)|Memory at ([0-9a-f]+) \((32|64)-bit, "
                     r"(non-)?prefetchable\))(.*)$")
_ROM = re.compile(r"\tExpansion ROM at (\w+)(.*)$")


def regions(text: str) -> dict:
    """``{"regions": {index: {...}}, "rom": (address, rest) or None}`` of one device's
    lspci -vvv text; lines inside a capability (SR-IOV's VF regions) are left out."""
    out, rom = {}, None
    for line in text.splitlines():
        if line.startswith("\t\t"):
            continue
        m = _REGION.match(line)
        if m:
            idx, io_addr, mem_addr, width, nonpref, rest = m.groups()
            size = re.search(r"\[size=(\w+)\]", rest)
            out[int(idx)] = {"io": io_addr is not None, "address": int(io_addr or mem_addr, 16),
                             "width": width, "prefetchable": nonpref is None and mem_addr is not None,
                             "virtual": "[virtual]" in rest, "disabled": "[disabled]" in rest,
                             "size": size.group(1) if size else None}
        m = _ROM.match(line)
        if m:
            rom = m.groups()
    return {"regions": out, "rom": rom}
