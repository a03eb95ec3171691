"""PCI addresses: the ``DDDD:BB:DD.F`` name of a function.

A PCI function is found by its domain (segment, 16 bits), bus (8 bits),
device (slot, 5 bits) and function (3 bits).  The kernel names each one in
sysfs as ``0000:00:04.0``, lower-case hex with the domain; lspci leaves out
domain 0 (``00:04.0``).  VFIO's group interface takes the kernel's name as the
device's name (``VFIO_GROUP_GET_DEVICE_FD``), and the hot-reset and PCI
dependent-device structures carry segment, bus and ``devfn`` (device << 3 |
function), so every part of the toolkit that names a device goes through
:class:`PciAddress`.
"""

from __future__ import annotations

import re

from ._value import OrderedValue
from .errors import InvalidValue

__all__ = ["PciAddress"]

# the domain is optional (lspci's short form); device is two hex digits, checked against 0x1f below
_ADDRESS = re.compile(r"(?:([0-9a-f]{4}):)?([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])", re.IGNORECASE)

_LIMITS = (("domain", 0xFFFF), ("bus", 0xFF), ("device", 0x1F), ("function", 0x7))


class PciAddress(OrderedValue):
    """One PCI function's address; ``str()`` is the kernel's sysfs name.

    Ordered as the kernel lists devices: by domain, bus, device, function.
    Raises :class:`vfio.errors.InvalidValue` (a ``ValueError``) when a part
    is not an int or does not fit its field.
    """
    domain: int
    bus: int
    device: int
    function: int

    def __init__(self, domain: int, bus: int, device: int, function: int):
        for (name, top), v in zip(_LIMITS, (domain, bus, device, function)):
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
                raise InvalidValue(f"PCI {name} {v!r} is not an integer from 0 to {top:#x}")
        self.__dict__.update(domain=domain, bus=bus, device=device, function=function)

    @classmethod
    def parse(cls, text: str) -> "PciAddress":
        """``"0000:00:04.0"`` or ``"00:04.0"`` (domain 0), in either case, with
        surrounding white space.  Raises :class:`~vfio.errors.InvalidValue`
        naming ``text`` for anything else (including a device above 0x1f)."""
        m = _ADDRESS.fullmatch(text.strip()) if isinstance(text, str) else None
        if m is None or int(m[3], 16) > 0x1F:
            raise InvalidValue(f"{text!r} is not a PCI address of the form DDDD:BB:DD.F")
        return cls(int(m[1] or "0", 16), int(m[2], 16), int(m[3], 16), int(m[4], 16))

    @classmethod
    def find_in(cls, text: str) -> "PciAddress | None":
        """The first full address (with its domain) inside ``text``, e.g. a
        device or file name that embeds one; None when there is none."""
        for m in _ADDRESS.finditer(text or ""):
            if m[1] is not None and int(m[3], 16) <= 0x1F:
                return cls(int(m[1], 16), int(m[2], 16), int(m[3], 16), int(m[4], 16))
        return None

    @classmethod
    def is_sysfs_name(cls, name: str) -> bool:
        """Whether ``name`` is exactly the kernel's name of a PCI function
        (as a directory under a bridge's sysfs directory is)."""
        try:
            return str(cls.parse(name)) == name
        except InvalidValue:
            return False

    @property
    def devfn(self) -> int:
        """Device and function in one byte, as the PCI bus and VFIO's hot-reset info carry them."""
        return self.device << 3 | self.function

    @property
    def slot(self) -> str:
        """The ``DDDD:BB:DD`` part: the functions of one physical device share it."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}"

    def __str__(self) -> str:
        return f"{self.slot}.{self.function:x}"


def normalize_bdf(bdf: str) -> str:
    """'00:04.0' -> '0000:00:04.0'; anything else malformed is a ValueError naming it."""
    return str(PciAddress.parse(bdf))
