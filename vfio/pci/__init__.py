"""PCI on top of VFIO: config-space decoding and the virtual config space.

* :mod:`vfio.pci.regs`: register offsets, bit masks and capability IDs (pci_regs.h).
* :mod:`vfio.pci.config`: :class:`ConfigSpace`, a decoded snapshot of a
  function's config space (header, BARs, ROM, both capability lists).
* :mod:`vfio.pci.vconfig`: :class:`VirtualConfigSpace`, the config space a
  guest (or a test) sees: write masks, write-1-to-clear bits, emulated vs
  passed-through bits, capability add/find/delete/hide, BAR sizing, state
  save/load.
* :mod:`vfio.pci.ids`: names from the PCI ID database (pci.ids), optional.
"""

from .config import (Bar, BridgeWindows, Capability, ConfigSpace, ConfigSpaceError, ExtCapability, Rom,
                     bar_size_from_mask, lspci_dump, walk_capabilities, walk_extended_capabilities)
from .ids import PciIds
from .vconfig import BarSpec, ConfigBacking, StateMismatchError, VirtualConfigSpace

__all__ = ["Bar", "BarSpec", "BridgeWindows", "Capability", "ConfigBacking", "ConfigSpace", "ConfigSpaceError",
           "ExtCapability", "PciIds", "Rom", "StateMismatchError", "VirtualConfigSpace", "bar_size_from_mask",
           "lspci_dump", "walk_capabilities", "walk_extended_capabilities"]
