"""VFIO device migration (migration v2): the device state machine, and saving a
device's internal state to a stream and loading it into another device.

A driver that can migrate answers ``VFIO_DEVICE_FEATURE_MIGRATION`` with flags:
``STOP_COPY`` (mandatory: the states RUNNING, STOP, STOP_COPY, RESUMING), ``P2P``
(adds RUNNING_P2P: running, but initiating no peer-to-peer DMA) and ``PRE_COPY``
(adds PRE_COPY, and PRE_COPY_P2P with P2P: the device keeps running while a
first part of its state is read out).  ``VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE``
reads and sets the state.  The kernel moves between states along *arcs*; a
request for a state more than one arc away is walked through intermediate
states by the kernel's ``vfio_mig_get_next_state()`` table (drivers step
through it one arc at a time).  :func:`next_state` is that table and its
skipping of states a device does not support; :meth:`Migration.set_state`
walks it one arc per ``SET`` so each arc taken is known and recorded, and
refuses a target the device cannot reach (:class:`UnsupportedTransition`)
before any system call.

Some arcs open a *data transfer session* and return its fd (the data fd):
RUNNING -> PRE_COPY, RUNNING_P2P -> PRE_COPY_P2P and STOP -> STOP_COPY give
a read-only fd with the device's state; STOP -> RESUMING a write-only one that
takes it.  In PRE_COPY the fd holds an initial part of the state (and what the
device dirtied since); ``VFIO_MIG_GET_PRECOPY_INFO`` on it says how many bytes
are ready (``initial_bytes``, ``dirty_bytes``); a read with nothing ready is a
temporary end (ENOMSG, or 0).  PRE_COPY_P2P -> STOP_COPY continues the same
session, which then ends for good at EOF.  ``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``
estimates the STOP_COPY size.  The bytes are opaque and must reach the target's
RESUMING fd in order; RESUMING -> STOP makes the target load them.
QEMU's hw/vfio/migration.c drives the same sequence.

:meth:`Migration.save` writes the device data into a self-describing stream
(below) and :meth:`Migration.load` reads it back into a device of the same kind.

Stream format (version 1; integers little-endian):

==========  =====  =========================================================
offset      size   field
==========  =====  =========================================================
0           8      magic ``b"VFIOMIG\\x00"``
8           2      version (1)
10          2      flags (0)
12          4      identity length N (at most 64 KiB)
16          4      CRC-32 of the identity
20          N      identity: UTF-8 JSON object (see :meth:`Migration.identity`)
20+N        ...    records, each a 16-byte header ``kind, flags (0), length,
                   CRC-32 of the payload`` (four u32) and ``length`` bytes
==========  =====  =========================================================

Record kinds: 1 PRECOPY and 2 STOP_COPY (device data read in those phases, at
most 64 MiB each; the target gets all their payloads in order), 3 END (16 bytes:
u64 device data bytes, u64 number of data records; must be last), 4 ATTACHMENTS
(optional, at most one, before any data record: a UTF-8 JSON object of state
kept beside the device's, such as a passthrough model's virtual config space).  A stream
that ends before END, a record whose CRC or length does not check, or an
identity that differs from the target's is refused with a
:class:`MigrationStreamError` naming the offset and what was wrong, and the
target is left in a state named in the error's ``state``.
"""

from __future__ import annotations

import ctypes
import enum
import errno
import json
import os
import struct
import zlib
from dataclasses import dataclass, field
from typing import BinaryIO

from . import uapi
from .errors import Error, VfioError, wrap_oserror
from ._resource import OwnedFd, Resource

__all__ = ["MigFlag", "MigState", "Arc", "PrecopyInfo", "SaveReport", "LoadReport", "Migration", "DataFd",
           "MigrationError", "MigrationUnsupported", "UnsupportedTransition", "MigrationFailed",
           "MigrationStreamError", "StreamTruncated", "StreamCorrupt", "StreamMismatch",
           "next_state", "transition_path", "supported_states",
           "STREAM_MAGIC", "STREAM_VERSION", "RecordKind"]


class MigFlag(enum.Flag):
    """``VFIO_MIGRATION_*``: what a device's migration driver supports."""
    STOP_COPY = uapi.VFIO_MIGRATION_STOP_COPY
    P2P = uapi.VFIO_MIGRATION_P2P
    PRE_COPY = uapi.VFIO_MIGRATION_PRE_COPY


class MigState(enum.IntEnum):
    """``enum vfio_device_mig_state``."""
    ERROR = uapi.VFIO_DEVICE_STATE_ERROR
    STOP = uapi.VFIO_DEVICE_STATE_STOP
    RUNNING = uapi.VFIO_DEVICE_STATE_RUNNING
    STOP_COPY = uapi.VFIO_DEVICE_STATE_STOP_COPY
    RESUMING = uapi.VFIO_DEVICE_STATE_RESUMING
    RUNNING_P2P = uapi.VFIO_DEVICE_STATE_RUNNING_P2P
    PRE_COPY = uapi.VFIO_DEVICE_STATE_PRE_COPY
    PRE_COPY_P2P = uapi.VFIO_DEVICE_STATE_PRE_COPY_P2P


_S = MigState
_F = MigFlag
_KNOWN_FLAGS = (_F.STOP_COPY | _F.P2P | _F.PRE_COPY).value

#: The flags a device needs for a state to exist (the kernel's state_flags_table).
#: ERROR needs every flag there is and more: it can never be asked for.
_STATE_FLAGS = {
    _S.STOP: _F.STOP_COPY, _S.RUNNING: _F.STOP_COPY, _S.STOP_COPY: _F.STOP_COPY, _S.RESUMING: _F.STOP_COPY,
    _S.PRE_COPY: _F.STOP_COPY | _F.PRE_COPY,
    _S.PRE_COPY_P2P: _F.STOP_COPY | _F.P2P | _F.PRE_COPY,
    _S.RUNNING_P2P: _F.STOP_COPY | _F.P2P,
}

#: vfio_from_fsm_table of drivers/vfio/vfio_main.c (Linux 6.12): for (current,
#: target), the next state on the way when the device supports every flag.
_FSM = {
    _S.STOP: {_S.STOP: _S.STOP, _S.RUNNING: _S.RUNNING_P2P, _S.PRE_COPY: _S.RUNNING_P2P,
              _S.PRE_COPY_P2P: _S.RUNNING_P2P, _S.STOP_COPY: _S.STOP_COPY, _S.RESUMING: _S.RESUMING,
              _S.RUNNING_P2P: _S.RUNNING_P2P, _S.ERROR: _S.ERROR},
    _S.RUNNING: {_S.STOP: _S.RUNNING_P2P, _S.RUNNING: _S.RUNNING, _S.PRE_COPY: _S.PRE_COPY,
                 _S.PRE_COPY_P2P: _S.RUNNING_P2P, _S.STOP_COPY: _S.RUNNING_P2P, _S.RESUMING: _S.RUNNING_P2P,
                 _S.RUNNING_P2P: _S.RUNNING_P2P, _S.ERROR: _S.ERROR},
    _S.PRE_COPY: {_S.STOP: _S.RUNNING, _S.RUNNING: _S.RUNNING, _S.PRE_COPY: _S.PRE_COPY,
                  _S.PRE_COPY_P2P: _S.PRE_COPY_P2P, _S.STOP_COPY: _S.PRE_COPY_P2P, _S.RESUMING: _S.RUNNING,
                  _S.RUNNING_P2P: _S.RUNNING, _S.ERROR: _S.ERROR},
    _S.PRE_COPY_P2P: {_S.STOP: _S.RUNNING_P2P, _S.RUNNING: _S.RUNNING_P2P, _S.PRE_COPY: _S.PRE_COPY,
                      _S.PRE_COPY_P2P: _S.PRE_COPY_P2P, _S.STOP_COPY: _S.STOP_COPY,
                      _S.RESUMING: _S.RUNNING_P2P, _S.RUNNING_P2P: _S.RUNNING_P2P, _S.ERROR: _S.ERROR},
    _S.STOP_COPY: {_S.STOP: _S.STOP, _S.RUNNING: _S.STOP, _S.PRE_COPY: _S.ERROR, _S.PRE_COPY_P2P: _S.ERROR,
                   _S.STOP_COPY: _S.STOP_COPY, _S.RESUMING: _S.STOP, _S.RUNNING_P2P: _S.STOP,
                   _S.ERROR: _S.ERROR},
    _S.RESUMING: {_S.STOP: _S.STOP, _S.RUNNING: _S.STOP, _S.PRE_COPY: _S.STOP, _S.PRE_COPY_P2P: _S.STOP,
                  _S.STOP_COPY: _S.STOP, _S.RESUMING: _S.RESUMING, _S.RUNNING_P2P: _S.STOP,
                  _S.ERROR: _S.ERROR},
    _S.RUNNING_P2P: {_S.STOP: _S.STOP, _S.RUNNING: _S.RUNNING, _S.PRE_COPY: _S.RUNNING,
                     _S.PRE_COPY_P2P: _S.PRE_COPY_P2P, _S.STOP_COPY: _S.STOP, _S.RESUMING: _S.STOP,
                     _S.RUNNING_P2P: _S.RUNNING_P2P, _S.ERROR: _S.ERROR},
    _S.ERROR: {s: _S.ERROR for s in MigState},
}

#: Arcs that start a data transfer session (the kernel returns a data fd).
_OPENS_SESSION = frozenset({(_S.RUNNING, _S.PRE_COPY), (_S.RUNNING_P2P, _S.PRE_COPY_P2P),
                            (_S.STOP, _S.STOP_COPY), (_S.STOP, _S.RESUMING)})
#: The saving group and RESUMING: states in which a session is open.
_SESSION_STATES = frozenset({_S.PRE_COPY, _S.PRE_COPY_P2P, _S.STOP_COPY, _S.RESUMING})


# ---------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------
class MigrationError(Error):
    """Root of the migration errors that are not the kernel's (``except vfio.Error`` catches all)."""


class MigrationUnsupported(VfioError):
    """The device has no migration driver (the kernel answered the MIGRATION feature with
    ``errno``, ENOTTY for a device without one)."""


class UnsupportedTransition(MigrationError, ValueError):
    """``set_state`` to a state the device cannot reach from where it is, given its flags
    (a state it does not support, ERROR, STOP_COPY -> PRE_COPY, or out of ERROR).
    Raised before any system call: the device stays in ``current``."""

    def __init__(self, current: MigState, target, flags: MigFlag, why: str, device: str = ""):
        self.current, self.target, self.flags, self.why = current, target, flags, why
        tname = target.name if isinstance(target, MigState) else repr(target)
        super().__init__(f"{device + ': ' if device else ''}migration state {current.name} -> {tname} is not possible "
                         f"with flags {_flag_names(flags)}: {why}")


class MigrationFailed(VfioError):
    """The kernel refused a step of a save or load (errno kept); ``state`` is the state
    the device was left in (read back after the failure and any recovery; None if that
    read failed too)."""

    def __init__(self, err: int, what: str, state: MigState | None):
        super().__init__(err, what)
        self.state = state

    def __str__(self) -> str:
        left = self.state.name if self.state is not None else "an unknown state"
        return f"{super().__str__()}; device left in {left}"


class MigrationStreamError(MigrationError, ValueError):
    """A migration stream that cannot be loaded.  ``offset``: where in the stream;
    ``state``: the migration state the target device was left in (None for a
    stream refused before any device was involved)."""

    def __init__(self, msg: str, offset: int, state: MigState | None = None):
        super().__init__(msg)
        self.reason = msg
        self.offset = offset
        self.state = state

    def __str__(self) -> str:
        where = f" (target left in {self.state.name})" if self.state is not None else ""
        return f"{self.reason}{where}"


class StreamTruncated(MigrationStreamError):
    """The stream ended before its END record (or in the middle of a header or payload)."""


class StreamCorrupt(MigrationStreamError):
    """Bad magic or version, a CRC that does not match, a length out of bounds, an unknown
    record kind, END totals that disagree with the records."""


class StreamMismatch(MigrationStreamError):
    """The stream was saved from a device of another kind (``field``: the identity
    entry that differs; ``saved``, ``this``: its two values)."""

    def __init__(self, msg: str, offset: int, field_name: str, saved, this, state: MigState | None = None):
        self.field, self.saved, self.this = field_name, saved, this
        super().__init__(msg, offset, state)


def _flag_names(flags: MigFlag) -> str:
    names = [f.name for f in MigFlag if f in flags]
    return "|".join(names) if names else "none"


# ---------------------------------------------------------------------------------------
# The state machine (pure)
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Arc:
    """One step of the device's FSM as the kernel executed it; ``data_fd``: whether the
    step returned a data fd (opened a transfer session)."""
    src: MigState
    dst: MigState
    data_fd: bool = False

    def __str__(self) -> str:
        return f"{self.src.name}->{self.dst.name}"


def supported_states(flags: MigFlag) -> frozenset:
    """The states a device with ``flags`` has (ERROR is never one you can ask for)."""
    return frozenset(s for s, need in _STATE_FLAGS.items() if need & flags == need)


def next_state(current: MigState, target: MigState, flags: MigFlag) -> MigState:
    """The next state on the way from ``current`` to ``target``, exactly as the kernel's
    ``vfio_mig_get_next_state()`` computes it: the table's step, skipping over states the
    device does not support.  Raises :class:`UnsupportedTransition` where the kernel
    answers EINVAL."""
    current, target, flags = MigState(current), MigState(target), MigFlag(flags)
    have = supported_states(flags)
    if MigFlag.STOP_COPY not in flags:
        raise UnsupportedTransition(current, target, flags, "STOP_COPY is mandatory for migration v2")
    if current not in have:
        raise UnsupportedTransition(current, target, flags, f"the current state {current.name} is not one "
                                    "the device supports (ERROR: only a device reset leaves it)")
    if target not in have:
        raise UnsupportedTransition(current, target, flags, f"the device does not support {target.name}")
    nxt = _FSM[current][target]
    for _ in range(len(MigState)):
        if nxt is _S.ERROR or nxt in have:
            break
        nxt = _FSM[nxt][target]
    if nxt is _S.ERROR:
        raise UnsupportedTransition(current, target, flags, "the kernel's FSM has no path (blocked arc)")
    return nxt


_PATHS: dict = {}


def transition_path(current: MigState, target: MigState, flags: MigFlag) -> tuple:
    """Every arc (src, dst) from ``current`` to ``target`` (empty when they are equal).
    Bounded by the number of states; raises :class:`UnsupportedTransition`.  A pure
    function of its arguments: answers are remembered."""
    key = (current, target, flags)
    path = _PATHS.get(key)
    if path is None:
        path = _PATHS[key] = _transition_path(MigState(current), MigState(target), MigFlag(flags))
    return path


def _transition_path(current: MigState, target: MigState, flags: MigFlag) -> tuple:
    arcs = []
    cur = current
    for _ in range(len(MigState)):
        if cur == target:
            return tuple(arcs)
        nxt = next_state(cur, target, flags)
        arcs.append((cur, nxt))
        cur = nxt
    raise UnsupportedTransition(current, target, MigFlag(flags), "the walk did not converge")   # pragma: no cover


# ---------------------------------------------------------------------------------------
# Reports
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PrecopyInfo:
    """``VFIO_MIG_GET_PRECOPY_INFO``: bytes of initial and of dirtied state ready to read."""
    initial_bytes: int
    dirty_bytes: int

    @property
    def pending(self) -> int:
        return self.initial_bytes + self.dirty_bytes


@dataclass
class SaveReport:
    """What :meth:`Migration.save` did: bytes of device data per phase, pre-copy rounds
    (the PRECOPY_INFO answer before each), the arcs taken and the stream bytes written."""
    precopy_bytes: int = 0
    stop_copy_bytes: int = 0
    precopy_rounds: list = field(default_factory=list)
    data_size_estimate: int | None = None
    arcs: list = field(default_factory=list)
    stream_bytes: int = 0

    @property
    def device_bytes(self) -> int:
        return self.precopy_bytes + self.stop_copy_bytes


@dataclass
class LoadReport:
    """What :meth:`Migration.load` did: device data bytes written, records, arcs taken."""
    device_bytes: int = 0
    records: int = 0
    arcs: list = field(default_factory=list)
    attachments: dict | None = None


# ---------------------------------------------------------------------------------------
# The data fd
# ---------------------------------------------------------------------------------------
class DataFd(OwnedFd):
    """A migration data transfer session's fd (owned; closing ends the session from the
    user's side).  Reads and writes go through here, with errno and what attached."""

    def __init__(self, fd: int, name: str, state: MigState):
        self.fd = fd
        self.name = name
        self.opened_in = state

    def fileno(self) -> int:
        return self.fd

    def _what(self, op: str) -> str:
        return f"{op} on the migration data fd of {self.name} (opened for {self.opened_in.name})"

    def _check(self, op: str) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, self._what(op) + ": closed")
        return self.fd

    def read(self, n: int) -> bytes | None:
        """Up to ``n`` bytes; ``b""`` at end of stream; None at a pre-copy temporary end
        (the kernel's ENOMSG: nothing ready now)."""
        fd = self._check("read")
        try:
            return os.read(fd, n)
        except OSError as e:
            if e.errno == errno.ENOMSG:
                return None
            raise wrap_oserror(e, self._what(f"read {n} bytes")) from None

    def readinto(self, buf) -> int | None:
        """``os.readv`` into ``buf``; the count, 0 at end of stream, None at ENOMSG."""
        fd = self._check("read")
        try:
            return os.readv(fd, [buf])
        except OSError as e:
            if e.errno == errno.ENOMSG:
                return None
            raise wrap_oserror(e, self._what(f"read {len(buf)} bytes")) from None

    def write_all(self, data) -> None:
        """Write every byte of ``data`` (the kernel may take less per call)."""
        fd = self._check("write")
        view = memoryview(data)
        done = 0
        while done < len(view):
            try:
                n = os.write(fd, view[done:])
            except OSError as e:
                raise wrap_oserror(e, self._what(f"write {len(view) - done} bytes")) from None
            if n <= 0:
                raise VfioError(errno.EIO, self._what(f"write {len(view) - done} bytes") + ": wrote nothing")
            done += n

    def precopy_info(self) -> PrecopyInfo:
        """``VFIO_MIG_GET_PRECOPY_INFO`` (only in PRE_COPY and PRE_COPY_P2P)."""
        st = uapi.vfio_precopy_info(argsz=ctypes.sizeof(uapi.vfio_precopy_info))
        uapi.ioctl(self._check("VFIO_MIG_GET_PRECOPY_INFO"), uapi.VFIO_MIG_GET_PRECOPY_INFO, st,
                   self._what("VFIO_MIG_GET_PRECOPY_INFO"))
        return PrecopyInfo(st.initial_bytes, st.dirty_bytes)


# ---------------------------------------------------------------------------------------
# Stream format
# ---------------------------------------------------------------------------------------
STREAM_MAGIC = b"VFIOMIG\x00"
STREAM_VERSION = 1
_HEADER = struct.Struct("<8sHHII")
_RECORD = struct.Struct("<IIII")
_END = struct.Struct("<QQ")
MAX_IDENTITY = 64 * 1024
MAX_RECORD = 64 * 1024 * 1024
#: Device data read per ``read`` (and so the largest data record save writes).
CHUNK = 1 << 20


class RecordKind(enum.IntEnum):
    PRECOPY = 1
    STOP_COPY = 2
    END = 3
    ATTACHMENTS = 4


def encode_header(identity: dict) -> bytes:
    """The stream's header and identity."""
    ident = json.dumps(identity, sort_keys=True, separators=(",", ":")).encode()
    if len(ident) > MAX_IDENTITY:
        raise MigrationStreamError(f"migration stream identity of {len(ident)} bytes is over the "
                                   f"{MAX_IDENTITY}-byte limit", 0)
    return _HEADER.pack(STREAM_MAGIC, STREAM_VERSION, 0, len(ident), zlib.crc32(ident)) + ident


def encode_record(kind: RecordKind, payload) -> bytes:
    """One record's header (the payload follows it)."""
    if len(payload) > MAX_RECORD:
        raise MigrationStreamError(f"migration record of {len(payload)} bytes is over {MAX_RECORD}", 0)
    return _RECORD.pack(int(kind), 0, len(payload), zlib.crc32(payload))


class StreamReader:
    """Reads and checks a migration stream from a binary file object, keeping the offset
    so every error names where it is."""

    def __init__(self, stream: BinaryIO, source: str = "migration stream"):
        self.stream = stream
        self.source = source
        self.offset = 0
        self.data_bytes = 0
        self.data_records = 0

    def _exact(self, n: int, what: str) -> bytes:
        parts, got = [], 0
        while got < n:
            b = self.stream.read(n - got)
            if not b:
                break
            parts.append(b)
            got += len(b)
        data = b"".join(parts)
        if len(data) != n:
            raise StreamTruncated(f"{self.source}: truncated at offset {self.offset + len(data)}: "
                                  f"{what} needs {n} bytes from offset {self.offset}, the stream has {len(data)}",
                                  self.offset + len(data))
        self.offset += n
        return data

    def header(self) -> dict:
        """Check magic, version and identity CRC; return the identity."""
        raw = self._exact(_HEADER.size, "the header")
        magic, version, flags, n, crc = _HEADER.unpack(raw)
        if magic != STREAM_MAGIC:
            raise StreamCorrupt(f"{self.source}: offset 0: not a VFIO migration stream "
                                f"(magic {magic!r}, expected {STREAM_MAGIC!r})", 0)
        if version != STREAM_VERSION:
            raise StreamCorrupt(f"{self.source}: offset 8: stream version {version}, this toolkit "
                                f"reads {STREAM_VERSION}", 8)
        if flags:
            raise StreamCorrupt(f"{self.source}: offset 10: unknown header flags {flags:#x}", 10)
        if n > MAX_IDENTITY:
            raise StreamCorrupt(f"{self.source}: offset 12: identity length {n} is over {MAX_IDENTITY}", 12)
        start = self.offset
        ident = self._exact(n, "the identity")
        if zlib.crc32(ident) != crc:
            raise StreamCorrupt(f"{self.source}: offset {start}: identity CRC {zlib.crc32(ident):#010x} "
                                f"does not match the header's {crc:#010x}", start)
        return self._json_object(ident, "identity", start)

    def record(self) -> tuple:
        """The next record as (kind, payload, offset of its header)."""
        at = self.offset
        kind, flags, length, crc = _RECORD.unpack(self._exact(_RECORD.size, "a record header"))
        try:
            kind = RecordKind(kind)
        except ValueError:
            raise StreamCorrupt(f"{self.source}: offset {at}: unknown record kind {kind}", at) from None
        if flags:
            raise StreamCorrupt(f"{self.source}: offset {at + 4}: unknown record flags {flags:#x}", at + 4)
        if length > MAX_RECORD:
            raise StreamCorrupt(f"{self.source}: offset {at + 8}: record length {length} is over {MAX_RECORD}",
                                at + 8)
        payload = self._exact(length, f"the {kind.name} record payload of offset {at}")
        got = zlib.crc32(payload)
        if got != crc:
            raise StreamCorrupt(f"{self.source}: offset {at}: {kind.name} record of {length} bytes has "
                                f"CRC {got:#010x}, its header says {crc:#010x}", at)
        if kind is RecordKind.ATTACHMENTS and self.data_records:
            raise StreamCorrupt(f"{self.source}: offset {at}: ATTACHMENTS record after device data", at)
        if kind is RecordKind.END:
            if length != _END.size:
                raise StreamCorrupt(f"{self.source}: offset {at}: END record is {length} bytes, not {_END.size}", at)
            total, count = _END.unpack(payload)
            if (total, count) != (self.data_bytes, self.data_records):
                raise StreamCorrupt(f"{self.source}: offset {at}: END says {total} bytes in {count} records, "
                                    f"the stream had {self.data_bytes} in {self.data_records}", at)
        elif kind is not RecordKind.ATTACHMENTS:
            self.data_bytes += length
            self.data_records += 1
        return kind, payload, at

    def attachments(self, payload: bytes, at: int) -> dict:
        return self._json_object(payload, "ATTACHMENTS", at)

    def _json_object(self, raw: bytes, what: str, at: int) -> dict:
        """``raw`` as a JSON object, or StreamCorrupt naming ``what`` and offset ``at``."""
        try:
            obj = json.loads(raw.decode())
        except (UnicodeDecodeError, ValueError) as e:
            raise StreamCorrupt(f"{self.source}: offset {at}: {what} is not JSON ({e})", at) from None
        if not isinstance(obj, dict):
            raise StreamCorrupt(f"{self.source}: offset {at}: {what} is not a JSON object", at)
        return obj


def compare_identity(saved: dict, this: dict, source: str, offset: int) -> None:
    """Raise :class:`StreamMismatch` at the first identity entry that differs (entries
    either side does not know, such as an mdev type of a device that is not an mdev, are
    skipped only when one side is None)."""
    for key in sorted(set(saved) | set(this), key=lambda k: (k != "mdev_type", k)):
        a, b = saved.get(key), this.get(key)
        if key == "mdev_type" and (a is None or b is None):
            continue
        if a != b:
            raise StreamMismatch(f"{source}: offset {offset}: saved from a device with {key} {a!r}, "
                                 f"the target has {b!r}", offset, key, a, b)


# ---------------------------------------------------------------------------------------
# The device's migration interface
# ---------------------------------------------------------------------------------------
_SYSFS_MDEV = "/sys/bus/mdev/devices"


class Migration(Resource):
    """A device's migration interface (``device.migration``).

    Accessors (no side effect): :attr:`flags`, :attr:`supported`, :attr:`state`,
    :meth:`precopy_info`, :meth:`data_size`, :meth:`identity`.  Commands:
    :meth:`set_state`, :meth:`save`, :meth:`load`.  The data fd of an open transfer
    session is :attr:`data` (owned here; closed when a step leaves the session's
    states, or with :meth:`close`, which the device's ``close()`` calls).
    """

    def __init__(self, device):
        self.device = device
        self.data: DataFd | None = None
        #: every arc taken by this object's commands, oldest first
        self.arcs: list[Arc] = []
        # fixed for the device's life (the driver sets them when the device is made)
        self._flags: MigFlag | None = None
        self._identity: dict | None = None
        self._header: bytes | None = None

    @property
    def name(self) -> str:
        return self.device.name

    # ---- accessors ------------------------------------------------------------------
    @property
    def flags(self) -> MigFlag:
        """``VFIO_DEVICE_FEATURE_MIGRATION``.  Raises :class:`MigrationUnsupported` (errno
        kept, ENOTTY) for a device without a migration driver.  Asked once: a driver sets
        them when the device is created."""
        if self._flags is not None:
            return self._flags
        try:
            # bits of a newer kernel's flags are left out: MigFlag refuses values it does not know
            self._flags = MigFlag(self.device.migration_flags() & _KNOWN_FLAGS)
            return self._flags
        except VfioError as e:
            if e.errno in (errno.ENOTTY, errno.EINVAL, errno.EOPNOTSUPP):
                raise MigrationUnsupported(e.errno, f"migration of {self.name}: the device has no "
                                                    "migration driver (VFIO_DEVICE_FEATURE_MIGRATION)") from None
            raise

    @property
    def supported(self) -> bool:
        try:
            self.flags
        except MigrationUnsupported:
            return False
        return True

    @property
    def state(self) -> MigState:
        """``VFIO_DEVICE_FEATURE_MIG_DEVICE_STATE`` GET."""
        return MigState(self.device.migration_state())

    def precopy_info(self) -> PrecopyInfo:
        """``VFIO_MIG_GET_PRECOPY_INFO`` on the open pre-copy session's fd."""
        if self.data is None or self.data.closed:
            raise VfioError(errno.EBADF, f"VFIO_MIG_GET_PRECOPY_INFO on {self.name}: no data transfer session "
                                         "is open (set_state(PRE_COPY) first)")
        return self.data.precopy_info()

    def data_size(self) -> int:
        """``VFIO_DEVICE_FEATURE_MIG_DATA_SIZE``: the driver's estimate of the STOP_COPY bytes."""
        out = self.device.feature(uapi.VFIO_DEVICE_FEATURE_MIG_DATA_SIZE, uapi.VFIO_DEVICE_FEATURE_GET,
                                  bytes(uapi.vfio_device_feature_mig_data_size()))
        return uapi.vfio_device_feature_mig_data_size.from_buffer_copy(out).stop_copy_length

    def identity(self) -> dict:
        """What a migration stream's target must match: the migration flags, the device's
        VFIO flags, its regions (index, size, flags) and IRQs (index, count, flags), for
        a PCI device its config-space IDs, and for an mdev its type (from sysfs).  Read once
        (a copy is returned): none of it changes while the device exists."""
        if self._identity is None:
            self._identity = self._read_identity()
        return json.loads(json.dumps(self._identity))

    def _read_identity(self) -> dict:
        dev = self.device
        ident = {"migration_flags": self.flags.value, "device_flags": dev.info.flags,
                 "regions": [[r.index, r.size, r.info.flags] for r in dev.regions],
                 "irqs": [[i, *self._irq(i)] for i in range(dev.info.num_irqs)],
                 "mdev_type": self._mdev_type()}
        if dev.info.is_pci:
            cfg = dev.config
            ident["pci_ids"] = "%04x:%04x %04x:%04x rev %02x class %06x" % (
                cfg.read16(0), cfg.read16(2), cfg.read16(0x2C), cfg.read16(0x2E), cfg.read8(8),
                cfg.read32(8) >> 8)
        return ident

    def _irq(self, index: int) -> list:
        try:
            i = self.device.irq_info(index)
        except VfioError as e:
            if e.errno != errno.EINVAL:
                raise
            return [None, None]
        return [i.count, i.flags]

    def _mdev_type(self) -> str | None:
        # an mdev is named by its UUID; its type is the name of its mdev_type link's target
        link = os.path.join(_SYSFS_MDEV, self.name, "mdev_type")
        try:
            return os.path.basename(os.readlink(link))
        except OSError:
            return None

    # ---- commands -------------------------------------------------------------------
    def _step(self, arc_to: MigState, cur: MigState) -> Arc:
        fd = self.device.set_migration_state(int(arc_to))
        arc = Arc(cur, arc_to, fd >= 0)
        self.arcs.append(arc)
        if fd >= 0:
            if self.data is not None:
                self.data.close()
            self.data = DataFd(fd, self.name, arc_to)
        elif arc_to not in _SESSION_STATES and self.data is not None:
            # the arc ended the session (STOP_COPY->STOP, PRE_COPY->RUNNING, RESUMING->STOP, ...)
            self.data.close()
            self.data = None
        return arc

    def set_state(self, target: MigState) -> tuple:
        """Move the device to ``target`` one kernel arc at a time (the path
        :func:`transition_path` gives for the device's flags); returns the :class:`Arc`\\ s
        taken (also appended to :attr:`arcs`).  A data fd an arc opens is kept as
        :attr:`data`.

        Raises :class:`UnsupportedTransition` (nothing done) for a target the device
        cannot reach, :class:`VfioError` (errno kept) if the kernel refuses an arc: the
        device is then in the state the error's text and :attr:`state` give (the
        kernel leaves it at the failed arc's start, or in ERROR).
        """
        return self._walk(self.state, MigState(target))

    def _walk(self, cur: MigState, target: MigState) -> tuple:
        # the commands know where the device is after each successful walk: no GET between them
        flags = self.flags
        try:
            path = transition_path(cur, target, flags)
        except UnsupportedTransition as e:
            raise UnsupportedTransition(e.current, e.target, e.flags, e.why, self.name) from None
        taken = []
        for src, dst in path:
            try:
                taken.append(self._step(dst, src))
            except VfioError as e:
                left = self._state_or_none()
                raise MigrationFailed(e.errno, f"{getattr(e, 'what', e)} (arc {src.name}->{dst.name} on the way "
                                               f"{cur.name}->{target.name})", left) from None
        return tuple(taken)

    def _state_or_none(self) -> MigState | None:
        try:
            return self.state
        except (VfioError, ValueError):
            return None

    def save(self, stream: BinaryIO, *, precopy: bool = True, max_precopy_rounds: int = 16,
             end_state: MigState = MigState.STOP, chunk: int = CHUNK,
             attachments: dict | None = None) -> SaveReport:
        """Save the device's state into ``stream`` (a binary file object opened for writing).

        From RUNNING (or RUNNING_P2P) on a device with PRE_COPY (and ``precopy``): enter
        PRE_COPY, read what ``VFIO_MIG_GET_PRECOPY_INFO`` says is ready, for at most
        ``max_precopy_rounds`` rounds or until nothing is pending, then STOP_COPY; else
        STOP then STOP_COPY.  The data fd is read until EOF, then the device goes to
        ``end_state`` (STOP: the source stays stopped, as a VMM leaves it).  ``attachments``
        (a JSON-ready dict) is stored before the device data; :meth:`load` hands it to
        its ``verify`` before touching the target.

        Raises :class:`MigrationFailed` (errno kept) if the kernel refuses a step or a
        read; the device is then moved back to the state it was in (RUNNING if that was a
        saving state: a failed migration lets the source run on, as QEMU does), by a
        device reset if the arcs back are refused, and the error's ``state`` names where
        it is.  ``OSError`` of ``stream`` itself propagates after the same recovery.
        """
        rep = SaveReport()
        flags = self.flags
        start = origin = self.state
        try:
            rep.data_size_estimate = self._data_size_or_none()
            if self._header is None:
                self._header = encode_header(self.identity())
            rep.stream_bytes += self._write(stream, self._header)
            if attachments is not None:
                att = json.dumps(attachments, sort_keys=True).encode()
                rep.stream_bytes += self._write(stream, encode_record(RecordKind.ATTACHMENTS, att) + att)
            records = 0
            use_pre = precopy and MigFlag.PRE_COPY in flags and start in (MigState.RUNNING, MigState.RUNNING_P2P)
            # a buffer the size the driver expects (allocating 1 MiB per save of a
            # 96-byte state was most of the save's time), at most ``chunk``
            size = chunk if rep.data_size_estimate is None else min(chunk, max(4096, rep.data_size_estimate + 1))
            view = memoryview(bytearray(size))
            if use_pre:
                pre = MigState.PRE_COPY_P2P if start is MigState.RUNNING_P2P else MigState.PRE_COPY
                rep.arcs += self._walk(start, pre)
                start = pre
                for _ in range(max_precopy_rounds):
                    info = self.data.precopy_info()
                    rep.precopy_rounds.append(info)
                    if not info.pending:
                        break
                    want = info.pending
                    while want > 0:
                        n = self.data.readinto(view[:min(want, len(view))])
                        if not n:       # 0 or ENOMSG: nothing more ready in this round
                            break
                        rep.stream_bytes += self._write(stream, encode_record(RecordKind.PRECOPY, view[:n]))
                        rep.stream_bytes += self._write(stream, view[:n])
                        rep.precopy_bytes += n
                        records += 1
                        want -= n
                    else:
                        continue
                    break
            rep.arcs += self._walk(start, MigState.STOP_COPY)
            if self.data is None:
                raise MigrationFailed(errno.EPROTO, f"STOP_COPY on {self.name}: the kernel opened no data fd",
                                      self._state_or_none())
            while True:
                n = self.data.readinto(view)
                if n is None:
                    raise MigrationFailed(errno.ENOMSG, f"read of the STOP_COPY data fd of {self.name}: "
                                                        "ENOMSG, which STOP_COPY may not return",
                                          self._state_or_none())
                if n == 0:
                    break
                rep.stream_bytes += self._write(stream, encode_record(RecordKind.STOP_COPY, view[:n]))
                rep.stream_bytes += self._write(stream, view[:n])
                rep.stop_copy_bytes += n
                records += 1
            end = _END.pack(rep.device_bytes, records)
            rep.stream_bytes += self._write(stream, encode_record(RecordKind.END, end) + end)
            rep.arcs += self._walk(MigState.STOP_COPY, MigState(end_state))
        except BaseException as e:
            state = self._recover(MigState.RUNNING if origin in _SESSION_STATES else origin)
            if isinstance(e, MigrationFailed):
                e.state = state
                raise
            if isinstance(e, VfioError):
                raise MigrationFailed(e.errno, f"save of {self.name}: {getattr(e, 'what', e)}", state) from None
            raise
        return rep

    @staticmethod
    def _write(stream: BinaryIO, data) -> int:
        n = stream.write(data)
        return len(data) if n is None else n

    def _data_size_or_none(self) -> int | None:
        try:
            return self.data_size()
        except VfioError as e:
            if e.errno == errno.ENOTTY:
                return None
            raise

    def _recover(self, want: MigState) -> MigState | None:
        """After a failure: close the session, try to reach ``want``, else reset."""
        if self.data is not None:
            self.data.close()
            self.data = None
        try:
            if self.state is not want:
                self.set_state(want)
        except (VfioError, MigrationError):
            self._try_reset()
        return self._state_or_none()

    def _try_reset(self) -> None:
        # VFIO_DEVICE_RESET is the uAPI's way out of any migration state (back to RUNNING).
        # Tried even without VFIO_DEVICE_FLAGS_RESET: a migration driver must honour it for
        # its FSM (mtty, for one, handles the ioctl without setting the flag).
        try:
            self.device.reset()
        except VfioError:
            pass

    def load(self, stream: BinaryIO, *, end_state: MigState = MigState.RUNNING,
             source: str = "migration stream", check_identity: bool = True,
             verify=None) -> LoadReport:
        """Load a stream :meth:`save` wrote into this device and move it to ``end_state``.

        The header and identity are checked before the device is touched: a stream that is
        not one, of another version, or from a device of another kind (:meth:`identity`)
        is refused with the device left as it was.  Then STOP -> RESUMING, each record's
        CRC is checked before its payload goes to the data fd, and RESUMING -> STOP makes
        the device load what it got.

        Raises :class:`StreamTruncated`, :class:`StreamCorrupt`, :class:`StreamMismatch`
        (offset named) or :class:`MigrationFailed` (errno kept: the kernel refused the data
        or the load); once RESUMING was entered, the device is reset (the uAPI's way back to
        RUNNING) so a half-loaded state is never left running, and the error's ``state``
        names the state it was left in.  ``check_identity=False`` skips the identity
        check and leaves the judgement to the driver (to exercise a driver's own checks).
        ``verify(attachments)`` (the saved ATTACHMENTS dict, or None) runs after the identity
        check and before the target is touched; what it raises propagates, the target as it was.
        """
        rep = LoadReport()
        reader = StreamReader(stream, source)
        try:
            saved = reader.header()
            if check_identity:
                compare_identity(saved, self.identity(), source, _HEADER.size)
            first = reader.record()
            if first[0] is RecordKind.ATTACHMENTS:
                rep.attachments = reader.attachments(first[1], first[2])
                first = None
        except MigrationStreamError as e:
            e.state = self._state_or_none()
            raise
        if verify is not None:
            verify(rep.attachments)
        try:
            rep.arcs += self._walk(self.state, MigState.RESUMING)
            if self.data is None:
                raise MigrationFailed(errno.EPROTO, f"RESUMING on {self.name}: the kernel opened no data fd",
                                      self._state_or_none())
            while True:
                kind, payload, at = first if first is not None else reader.record()
                first = None
                if kind is RecordKind.END:
                    break
                if kind is RecordKind.ATTACHMENTS:
                    raise StreamCorrupt(f"{source}: offset {at}: a second ATTACHMENTS record", at)
                try:
                    self.data.write_all(payload)
                except VfioError as e:
                    raise MigrationFailed(e.errno, f"{getattr(e, 'what', e)} (the record at stream offset {at})",
                                          None) from None
                rep.device_bytes += len(payload)
                rep.records += 1
            rep.arcs += self._walk(MigState.RESUMING, MigState(end_state))
        except (MigrationStreamError, MigrationFailed) as e:
            e.state = self._reset_after_load()
            raise
        except BaseException:
            self._reset_after_load()
            raise
        return rep

    def _reset_after_load(self) -> MigState | None:
        if self.data is not None:
            self.data.close()
            self.data = None
        self._try_reset()
        return self._state_or_none()

    def close(self) -> None:
        """Close an open session's data fd (the device's state is not changed)."""
        if self.data is not None:
            self.data.close()
            self.data = None
