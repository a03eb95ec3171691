"""Names from the PCI ID database (``pci.ids``, as shipped by pciutils / hwdata).

The database maps vendor, device, subsystem and class codes to names.  It is
optional: every lookup returns ``None`` for an ID it does not know (or when no
database file was found), and callers print the number instead -- IDs always
stay visible as numbers, names are decoration.

File format (see the file's own header): ``vvvv  Vendor`` lines, then
``<TAB>dddd  Device`` lines under them, then ``<TAB><TAB>ssss ssss  Subsystem``
lines; after the devices a ``C cc  Class`` section with ``<TAB>ss  Subclass``
and ``<TAB><TAB>pp  Programming interface`` lines.  ``#`` starts a comment.

Example::

    ids = PciIds.default()            # Debian: /usr/share/misc/pci.ids
    ids.vendor_name(0x1af4)           # 'Red Hat, Inc.'
    ids.device_name(0x1af4, 0x1041)   # 'Virtio 1.0 network device'
    ids.class_name(0x020000)          # 'Ethernet controller'
    ids.prog_if_name(0x010601)        # 'AHCI 1.0'
"""

from __future__ import annotations

import os
from functools import lru_cache

__all__ = ["PciIds", "DEFAULT_PATHS", "PciIdsError"]

#: Where distributions install the database, first found wins.
DEFAULT_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


class PciIdsError(ValueError):
    """A pci.ids file that does not parse; names the path and line."""


class PciIds:
    """A parsed pci.ids.  ``PciIds()`` is an empty database (every lookup None)."""

    def __init__(self, path: str | None = None):
        self.path = path
        self._vendors: dict[int, str] = {}
        self._devices: dict[tuple[int, int], str] = {}
        self._subsystems: dict[tuple[int, int, int, int], str] = {}
        self._classes: dict[tuple[int, ...], str] = {}
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                self._parse(f)

    @classmethod
    def default(cls) -> "PciIds":
        """The system database (shared, parsed once), or an empty one if none is installed."""
        return _default()

    def _parse(self, lines) -> None:
        vendor = device = None
        cls_ = sub = None
        in_classes = False
        for lineno, raw in enumerate(lines, 1):
            line = raw.rstrip("\n")
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    in_classes = True
                    code, name = line[2:].split(None, 1)
                    cls_, sub = int(code, 16), None
                    self._classes[(cls_,)] = name.strip()
                elif not line.startswith("\t"):
                    in_classes = False
                    code, name = line.split(None, 1)
                    if len(code) != 4:  # other top-level sections (device types, languages...) end the devices
                        vendor = None
                        continue
                    vendor, device = int(code, 16), None
                    self._vendors[vendor] = name.strip()
                elif line.startswith("\t\t"):
                    if in_classes and sub is not None:
                        code, name = line.strip().split(None, 1)
                        self._classes[(cls_, sub, int(code, 16))] = name.strip()
                    elif vendor is not None and device is not None:
                        sv, sd, name = line.strip().split(None, 2)
                        self._subsystems[(vendor, device, int(sv, 16), int(sd, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    if in_classes:
                        sub = int(code, 16)
                        self._classes[(cls_, sub)] = name.strip()
                    elif vendor is not None:
                        device = int(code, 16)
                        self._devices[(vendor, device)] = name.strip()
            except ValueError as e:
                raise PciIdsError(f"{self.path}:{lineno}: cannot parse {line!r} ({e})") from None

    def vendor_name(self, vendor: int) -> str | None:
        return self._vendors.get(vendor)

    def device_name(self, vendor: int, device: int) -> str | None:
        return self._devices.get((vendor, device))

    def subsystem_name(self, vendor: int, device: int, sub_vendor: int, sub_device: int) -> str | None:
        """The name listed under the device for this subsystem, or None."""
        return self._subsystems.get((vendor, device, sub_vendor, sub_device))

    def class_name(self, class_code: int) -> str | None:
        """Name of a 24-bit class code as lspci shows it: the subclass name, else the base class name."""
        c, s = class_code >> 16, (class_code >> 8) & 0xFF
        return self._classes.get((c, s)) or self._classes.get((c,))

    def prog_if_name(self, class_code: int) -> str | None:
        """Name of the programming interface (low byte) of a 24-bit class code, or None."""
        return self._classes.get((class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF))

    def __len__(self) -> int:
        return len(self._vendors)


@lru_cache(maxsize=1)
def _default() -> PciIds:
    for p in DEFAULT_PATHS:
        if os.path.exists(p):
            return PciIds(p)
    return PciIds()
