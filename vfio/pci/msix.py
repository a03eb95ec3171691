"""MSI and MSI-X as a VMM emulates them for a passed-through device.

With VFIO the guest never programs the device's real MSI/MSI-X registers: the
host kernel owns them (they hold host interrupt addresses).  Instead a VMM
shows the guest an emulated MSI capability and MSI-X table, and turns what the
guest writes there into ``VFIO_DEVICE_SET_IRQS`` calls that connect each
device vector to an eventfd.  The eventfd is what the VMM hands to KVM as an
irqfd, routed to the message (address, data) the guest programmed.

Per-vector masking (the MSI-X vector-control mask bit, the MSI mask bits of a
maskable MSI capability, the MSI-X function mask) cannot be done in the kernel
(vfio-pci answers ENOTTY to ``ACTION_MASK`` for MSI/MSI-X).  QEMU's answer,
used here too: while a vector is masked its kernel trigger is pointed at a
second, private eventfd; a signal there is a *pending* interrupt (the PBA bit);
when the guest unmasks the vector the trigger goes back to the guest-facing
eventfd, and a pending interrupt is delivered then.  The guest-facing eventfd
of a vector never changes for the life of the model, so a VMM registers its
irqfd once.

This module holds the pieces that do not need the device: :class:`Vector`
(the two eventfds and the mask/pending state of one vector),
:class:`MsiMessage`, and :class:`MsixTable` (the emulated table and PBA of
PCI 3.0 section 6.8.2).  :mod:`vfio.pci.passthrough` connects them to the
config space and the device.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import InvalidValue, RegionAccessError, VectorOutOfRange
from ..irq import EventFd
from . import regs as R
from .caps import MsixCap

__all__ = ["MsiMessage", "Vector", "MsixTable", "MSIX_ENTRY_MASKED"]

#: Vector Control bit 0: the vector is masked.
MSIX_ENTRY_MASKED = 0x1
_ENTRY_ADDR_LO, _ENTRY_ADDR_HI, _ENTRY_DATA, _ENTRY_CTRL = 0, 4, 8, 12


def eventfd_pair(first: str, second: str) -> tuple[EventFd, EventFd]:
    """Two new eventfds (named ``first`` and ``second``): an interrupt's guest-facing one and its
    companion (masked-pending, or INTx resample).  Neither is left open if the second fails."""
    a = EventFd(first)
    try:
        return a, EventFd(second)
    except BaseException:
        a.close()
        raise


@dataclass(frozen=True)
class MsiMessage:
    """The message a guest programmed for one vector: a write of ``data`` to ``address``.

    On x86 the address is in the 0xfeexxxxx window and names the target APIC;
    a VMM turns it into a KVM MSI route for the vector's irqfd.
    """
    address: int
    data: int

    def __str__(self) -> str:
        return f"{self.address:#x}<-{self.data:#x}"


class Vector:
    """One interrupt vector of MSI or MSI-X as the model routes it.

    ``eventfd`` is the guest-facing eventfd (stable for the model's life);
    while the vector is masked the kernel signals ``_pending_efd`` instead and
    the signal becomes a pending bit.  Owns both eventfds.
    """

    __slots__ = ("index", "number", "eventfd", "_pending_efd", "masked", "_pending")

    def __init__(self, index: int, number: int, label: str):
        self.index = index          # VFIO IRQ index (MSI or MSI-X)
        self.number = number
        self.eventfd, self._pending_efd = eventfd_pair(f"{label} vector {number}",
                                                       f"{label} vector {number} (masked)")
        self.masked = True
        self._pending = False

    def kernel_fd(self) -> int:
        """The eventfd the kernel should signal for this vector now."""
        return self._pending_efd.fd if self.masked else self.eventfd.fd

    @property
    def pending(self) -> bool:
        """True when the device raised the vector while it was masked (collects the signal)."""
        if self._pending_efd.read():
            self._pending = True
        return self._pending

    def clear_pending(self) -> None:
        self._pending_efd.read()
        self._pending = False

    def deliver_pending(self) -> bool:
        """At unmask: hand a pending interrupt to the guest-facing eventfd.  Returns whether one was."""
        if self.pending:
            self._pending = False
            self.eventfd.signal()
            return True
        return False

    def close(self) -> None:
        self.eventfd.close()
        self._pending_efd.close()

    def __repr__(self) -> str:
        return f"Vector(index {self.index}, #{self.number}, {'masked' if self.masked else 'unmasked'})"


class MsixTable:
    """The emulated MSI-X table and Pending Bit Array of ``size`` vectors.

    Entries are 16 bytes (address low, address high, data, vector control); at
    reset every vector is masked and every field else is 0 (PCI 3.0 6.8.2.9).
    The PBA is read-only: its bits come from the ``pending`` callable (vector
    number -> bool), which the model connects to its :class:`Vector` objects.
    Accesses are naturally aligned 4- or 8-byte (the spec's DWORD/QWORD rule);
    anything else is a :class:`vfio.errors.RegionAccessError`.
    """

    def __init__(self, size: int, pending=None):
        if not 1 <= size <= R.MSIX_FLAGS_QSIZE + 1:
            raise InvalidValue(f"MSI-X table size {size} is outside 1..{R.MSIX_FLAGS_QSIZE + 1}")
        self.size = size
        self.table = bytearray(size * R.MSIX_ENTRY_SIZE)
        self._pending = pending or (lambda v: False)
        self.reset()

    @property
    def table_bytes(self) -> int:
        return MsixCap.table_bytes_for(self.size)

    @property
    def pba_bytes(self) -> int:
        return MsixCap.pba_bytes_for(self.size)

    def reset(self) -> None:
        self.table[:] = bytes(len(self.table))
        for v in range(self.size):
            struct.pack_into("<I", self.table, v * R.MSIX_ENTRY_SIZE + _ENTRY_CTRL, MSIX_ENTRY_MASKED)

    # ---- decoded entries ---------------------------------------------------------------
    def message(self, vector: int) -> MsiMessage:
        lo, hi, data, _ctrl = struct.unpack_from("<IIII", self.table, self._entry(vector))
        return MsiMessage(lo | hi << 32, data)

    def masked(self, vector: int) -> bool:
        return bool(struct.unpack_from("<I", self.table, self._entry(vector) + _ENTRY_CTRL)[0] & MSIX_ENTRY_MASKED)

    def _entry(self, vector: int) -> int:
        if not 0 <= vector < self.size:
            raise VectorOutOfRange(f"MSI-X vector {vector} is outside the table of {self.size}")
        return vector * R.MSIX_ENTRY_SIZE

    # ---- guest accesses ----------------------------------------------------------------
    @staticmethod
    def _check(what: str, offset: int, size: int, limit: int) -> None:
        if size not in (4, 8) or offset % size or offset < 0 or offset + size > limit:
            raise RegionAccessError(f"MSI-X {what}: {size}-byte access at {offset:#x} is not an aligned "
                                    f"DWORD/QWORD inside its {limit:#x} bytes")

    def read_table(self, offset: int, size: int) -> int:
        self._check("table", offset, size, self.table_bytes)
        return int.from_bytes(self.table[offset:offset + size], "little")

    def write_table(self, offset: int, size: int, value: int) -> list[int]:
        """Store a guest write; returns the vectors whose entry changed."""
        self._check("table", offset, size, self.table_bytes)
        old = bytes(self.table[offset:offset + size])
        new = (value & ((1 << (8 * size)) - 1)).to_bytes(size, "little")
        if old == new:
            return []
        self.table[offset:offset + size] = new
        first, last = offset // R.MSIX_ENTRY_SIZE, (offset + size - 1) // R.MSIX_ENTRY_SIZE
        return list(range(first, last + 1))

    def read_pba(self, offset: int, size: int) -> int:
        self._check("PBA", offset, size, self.pba_bytes)
        value = 0
        for bit in range(8 * size):
            v = offset * 8 + bit
            if v < self.size and self._pending(v):
                value |= 1 << bit
        return value

    # ---- state ---------------------------------------------------------------------------
    def get_state(self) -> str:
        return bytes(self.table).hex()

    def set_state(self, table_hex: str) -> None:
        """Load :meth:`get_state` output (the one loader of a saved table; a
        PassthroughDevice validates the rest of its state before calling it)."""
        data = bytes.fromhex(table_hex)
        if len(data) != len(self.table):
            raise InvalidValue(f"saved MSI-X table is {len(data)} bytes, this one {len(self.table)}")
        self.table[:] = data
