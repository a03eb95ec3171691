"""PCI on top of VFIO: config-space decoding and the virtual config space.

* :mod:`vfio.pci.regs`: register offsets, bit masks and capability IDs (pci_regs.h),
  and :class:`BarKind`.
* :mod:`vfio.pci.caps`: typed views of the MSI, MSI-X, PCI Express and PM
  capabilities (:class:`MsiCap` ...), the one place their register layout is
  worked out; the decoder, the virtual config space and the passthrough model
  read them through these.
* :mod:`vfio.pci.config`: :class:`ConfigSpace`, a decoded snapshot of a
  function's config space (header, BARs, ROM, both capability lists).
* :mod:`vfio.pci.vconfig`: :class:`VirtualConfigSpace`, the config space a
  guest (or a test) sees: write masks, write-1-to-clear bits, emulated vs
  passed-through bits, capability add/find/delete/hide, BAR sizing, state
  save/load.
* :mod:`vfio.pci.ids`: names from the PCI ID database (pci.ids), optional.
"""

from typing import TYPE_CHECKING

from .._lazy import lazy_face

if TYPE_CHECKING:   # for linters; at run time each name loads on first use (below)
    from .caps import MsiCap, MsixCap, PcieCap, PmCap
    from .config import (Bar, BridgeWindows, Capability, ConfigSpace, ConfigSpaceError, ExtCapability, Rom,
                         bar_size_from_mask, bar_write_mask, lspci_dump, rom_write_mask, walk_capabilities,
                         walk_extended_capabilities)
    from .ids import PciIds
    from .regs import BarKind
    from .vconfig import BarSpec, ConfigBacking, StateMismatchError, VirtualConfigSpace

# Loaded lazily (PEP 562), as the package face of vfio is: ``vfio-inspect``'s
# listing needs only the names database (vfio.pci.ids), not the decoder and the
# virtual config space, which importing this package used to load first.
_LAZY = {
    "caps": ("MsiCap", "MsixCap", "PcieCap", "PmCap"),
    "config": ("Bar", "BridgeWindows", "Capability", "ConfigSpace", "ConfigSpaceError", "ExtCapability", "Rom",
               "bar_size_from_mask", "bar_write_mask", "lspci_dump", "rom_write_mask", "walk_capabilities",
               "walk_extended_capabilities"),
    "regs": ("BarKind",),
    "ids": ("PciIds",),
    "vconfig": ("BarSpec", "ConfigBacking", "StateMismatchError", "VirtualConfigSpace"),
}
__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)


__all__ = ["Bar", "BarKind", "BarSpec", "BridgeWindows", "Capability", "ConfigBacking", "ConfigSpace",
           "ConfigSpaceError", "ExtCapability", "MsiCap", "MsixCap", "PcieCap", "PmCap", "PciIds", "Rom",
           "StateMismatchError", "VirtualConfigSpace", "bar_size_from_mask", "bar_write_mask", "lspci_dump",
           "rom_write_mask", "walk_capabilities", "walk_extended_capabilities"]
