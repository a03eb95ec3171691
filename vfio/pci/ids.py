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

from ..errors import Error

__all__ = ["PciIds", "DEFAULT_PATHS", "PciIdsError"]

#: Where distributions install the database, first found wins.
DEFAULT_PATHS = ("/usr/share/misc/pci.ids", "/usr/share/hwdata/pci.ids", "/usr/share/pci.ids")


class PciIdsError(Error, ValueError):
    """A pci.ids file that does not parse; names the path and line."""


class PciIds:
    """A pci.ids database.  ``PciIds()`` is an empty database (every lookup None).

    The file (about 1.3 MB, 40,000 lines) is read once but parsed lazily: a
    lookup parses only its vendor's block, or the class section, found with
    ``str.find`` -- a whole-file parse costs more than the rest of a
    ``vfio-inspect`` run.
    """

    def __init__(self, path: str | None = None):
        self.path = path
        self._text = ""
        self._vendors: dict[int, str | None] = {}
        self._devices: dict[tuple[int, int], str] = {}
        self._subsystems: dict[tuple[int, int, int, int], str] = {}
        self._classes: dict[tuple[int, ...], str] | None = None
        if path is not None:
            with open(path, encoding="utf-8", errors="replace") as f:
                self._text = "\n" + f.read()

    @classmethod
    def default(cls) -> "PciIds":
        """The system database (shared, read once), or an empty one if none is installed."""
        return _default()

    def _lineno(self, pos: int) -> int:
        return self._text.count("\n", 0, pos)

    def _block(self, start: int) -> tuple[int, list[str]]:
        """The lines from ``start`` (a line start) up to the next top-level line."""
        lines, pos = [], start
        text = self._text
        while pos < len(text):
            nl = text.find("\n", pos)
            nl = len(text) if nl < 0 else nl
            line = text[pos:nl]
            if lines and line and not line.startswith(("\t", "#")):
                break
            lines.append(line)
            pos = nl + 1
        return start, lines

    def _load_vendor(self, vendor: int) -> None:
        if vendor in self._vendors:
            return
        self._vendors[vendor] = None
        at = self._text.find(f"\n{vendor:04x}  ")
        if at < 0 or self._text.find("\nC ", 0, at) >= 0:      # not found, or past the device list
            return
        start, lines = self._block(at + 1)
        device = None
        for i, line in enumerate(lines):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if not line.startswith("\t"):
                    self._vendors[vendor] = line.split(None, 1)[1].strip()
                elif line.startswith("\t\t"):
                    if device is not None:
                        sv, sd, name = line.strip().split(None, 2)
                        self._subsystems[(vendor, device, int(sv, 16), int(sd, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    device = int(code, 16)
                    self._devices[(vendor, device)] = name.strip()
            except (ValueError, IndexError) as e:
                raise PciIdsError(f"{self.path}:{self._lineno(start) + i}: cannot parse {line!r} ({e})") from None

    def _load_classes(self) -> dict:
        if self._classes is not None:
            return self._classes
        self._classes = {}
        at = self._text.find("\nC ")
        if at < 0:
            return self._classes
        cls_ = sub = None
        lineno = self._lineno(at + 1)
        for i, line in enumerate(self._text[at + 1:].split("\n")):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            try:
                if line.startswith("C "):
                    code, name = line[2:].split(None, 1)
                    cls_, sub = int(code, 16), None
                    self._classes[(cls_,)] = name.strip()
                elif not line.startswith("\t"):
                    break                      # the next top-level section
                elif line.startswith("\t\t"):
                    if sub is not None:
                        code, name = line.strip().split(None, 1)
                        self._classes[(cls_, sub, int(code, 16))] = name.strip()
                else:
                    code, name = line.strip().split(None, 1)
                    sub = int(code, 16)
                    self._classes[(cls_, sub)] = name.strip()
            except ValueError as e:
                raise PciIdsError(f"{self.path}:{lineno + i}: cannot parse {line!r} ({e})") from None
        return self._classes

    def vendor_name(self, vendor: int) -> str | None:
        self._load_vendor(vendor)
        return self._vendors.get(vendor)

    def device_name(self, vendor: int, device: int) -> str | None:
        self._load_vendor(vendor)
        return self._devices.get((vendor, device))

    def subsystem_name(self, vendor: int, device: int, sub_vendor: int, sub_device: int) -> str | None:
        """The name listed under the device for this subsystem, or None."""
        self._load_vendor(vendor)
        return self._subsystems.get((vendor, device, sub_vendor, sub_device))

    def class_name(self, class_code: int) -> str | None:
        """Name of a 24-bit class code as lspci shows it: the subclass name, else the base class name."""
        c, s = class_code >> 16, (class_code >> 8) & 0xFF
        classes = self._load_classes()
        return classes.get((c, s)) or classes.get((c,))

    def prog_if_name(self, class_code: int) -> str | None:
        """Name of the programming interface (low byte) of a 24-bit class code, or None."""
        return self._load_classes().get((class_code >> 16, (class_code >> 8) & 0xFF, class_code & 0xFF))

    def __len__(self) -> int:
        """Number of vendors in the device list."""
        end = self._text.find("\nC ")
        head = self._text if end < 0 else self._text[:end]
        return sum(1 for line in head.split("\n") if len(line) > 6 and line[4:6] == "  " and line[0] != "\t"
                   and line[0] != "#")


@lru_cache(maxsize=1)
def _default() -> PciIds:
    for p in DEFAULT_PATHS:
        if os.path.exists(p):
            return PciIds(p)
    return PciIds()
