"""Eventfd interrupts.

VFIO delivers a device interrupt by signalling an eventfd the user handed to
``VFIO_DEVICE_SET_IRQS`` (``DATA_EVENTFD | ACTION_TRIGGER``): each vector of an
IRQ index (INTx, MSI, MSI-X, ERR, REQ on vfio-pci) gets its own eventfd, whose
counter the kernel increments per interrupt.  The same fds can be handed to KVM
as irqfds.  Level-triggered INTx is *automasked*: after it fires the kernel
masks it until the user unmasks (SET_IRQS ``ACTION_UNMASK``, or a resample
eventfd).

This module owns the eventfd objects (:class:`EventFd`) and the ways to wait
on many of them (:class:`Dispatcher` over one ``epoll``, and an ``asyncio``
wait).  Programming them into the device is :class:`vfio.device.Device`'s job.
"""

from __future__ import annotations

import errno
import math
import os
import select
import selectors
import time
from typing import Callable, Iterable

from .errors import VfioError
from ._resource import OwnedFd, Resource


class EventFd(OwnedFd):
    """An owned, non-blocking eventfd.  ``read()`` returns the count since the last read."""

    __slots__ = ("fd", "label")

    def __init__(self, label: str = ""):
        self.fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
        self.label = label

    def fileno(self) -> int:
        if self.fd < 0:
            raise VfioError(errno.EBADF, f"eventfd {self.label} is closed" if self.label else "eventfd is closed")
        return self.fd

    def read(self) -> int:
        """The number of signals since the last read, 0 if none (never blocks)."""
        try:
            return os.eventfd_read(self.fileno())
        except BlockingIOError:
            return 0

    def signal(self, n: int = 1) -> None:
        os.eventfd_write(self.fileno(), n)

    def wait(self, timeout: float | None = None) -> int:
        """Block until signalled or ``timeout`` seconds pass; returns the count (0 on timeout)."""
        with selectors.DefaultSelector() as sel:
            sel.register(self.fileno(), selectors.EVENT_READ)
            deadline = None if timeout is None else time.monotonic() + timeout
            while True:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                if not sel.select(left):
                    return 0
                n = self.read()
                if n:
                    return n
                if deadline is not None and time.monotonic() >= deadline:
                    return 0

    async def wait_async(self) -> int:
        """Wait in an asyncio loop; returns the count."""
        import asyncio      # here, not at module level: it costs ~50 ms of every tool's start-up
        loop = asyncio.get_running_loop()
        while True:
            fut = loop.create_future()
            loop.add_reader(self.fileno(), fut.set_result, None)
            try:
                await fut
            finally:
                loop.remove_reader(self.fd)
            n = self.read()
            if n:
                return n


    def __repr__(self) -> str:
        return f"EventFd({self.label!r}, fd={self.fd})"


def close_eventfds(efds: Iterable[EventFd]) -> None:
    """Close every eventfd of ``efds`` (the one eventfd teardown of the toolkit; the
    caller first takes the list out of its owner so nothing closes them twice)."""
    for e in efds:
        e.close()


class Dispatcher(Resource):
    """Waits on many eventfds at once and calls a handler per signalled one.

    One ``epoll`` for any number of vectors; handlers get ``(eventfd, count)``.
    Does not own the eventfds.

    This is the interrupt hot path, so it is ``select.epoll`` itself rather
    than ``selectors`` (which builds a key tuple and a list per wakeup): the
    fd-to-handler table is a dict the poll loop reads directly, and a signalled
    :class:`EventFd` is read with ``os.eventfd_read`` on its own ``fd`` (-1 once
    closed), not on the number epoll reported: one closed by an earlier handler
    of the same wakeup raises ``VfioError(EBADF)`` as :meth:`EventFd.read` does,
    instead of reading whatever file reused the number.  A subclass that
    overrides ``read()`` is read through it.
    Errors are those of ``selectors``: ``KeyError`` for an eventfd added twice
    or removed when not added.
    """

    def __init__(self):
        self._ep = select.epoll()
        self._epoll_wait = self._ep.poll
        #: fd -> (eventfd, handler) for EventFds read directly, and for any other
        #: (a subclass with its own read(), whose read() is called as before)
        self._direct: dict[int, tuple] = {}
        self._other: dict[int, tuple] = {}
        self._maxevents = 1

    def add(self, efd: EventFd, handler: Callable[[EventFd, int], None]) -> None:
        fd = efd.fileno()
        if fd in self._direct or fd in self._other:
            raise KeyError(f"{efd!r} (FD {fd}) is already registered")
        self._ep.register(fd, select.EPOLLIN)
        table = self._direct if type(efd).read is EventFd.read else self._other
        table[fd] = (efd, handler)
        self._maxevents = len(self._direct) + len(self._other)

    def add_all(self, efds: Iterable[EventFd], handler: Callable[[EventFd, int], None]) -> None:
        for e in efds:
            self.add(e, handler)

    def remove(self, efd: EventFd) -> None:
        fd = efd.fileno()
        if self._direct.pop(fd, None) is None and self._other.pop(fd, None) is None:
            raise KeyError(f"{efd!r} is not registered")
        self._maxevents = len(self._direct) + len(self._other) or 1
        try:
            self._ep.unregister(fd)
        except OSError:
            pass            # closed elsewhere: epoll already forgot it

    def poll(self, timeout: float | None = 0) -> int:
        """Dispatch whatever is pending (waiting up to ``timeout``); returns how many handlers ran."""
        if timeout != 0:                                    # (0, the busy loop's case, as it is)
            if timeout is None:
                timeout = -1
            elif timeout < 0:
                timeout = 0
            else:
                timeout = math.ceil(timeout * 1e3) * 1e-3   # epoll counts ms: round up, never spin
        direct = self._direct
        ran = 0
        for fd, _ in self._epoll_wait(timeout, self._maxevents):
            entry = direct.get(fd)
            if entry is None:
                entry = self._other.get(fd)
                if entry is None:
                    continue        # removed by an earlier handler of this wakeup
                efd, handler = entry
                n = efd.read()
            else:
                efd, handler = entry
                try:
                    # efd.fd, not fd: an eventfd closed by an earlier handler of this
                    # wakeup has fd -1 (EBADF below), never another file's number
                    n = _eventfd_read(efd.fd)
                except BlockingIOError:
                    continue
                except (OSError, ValueError):   # ValueError: fd -1
                    n = efd.read()          # closed: VfioError(EBADF), as EventFd.read says it
            if n:
                handler(efd, n)
                ran += 1
        return ran

    def close(self) -> None:
        self._ep.close()
        self._direct.clear()
        self._other.clear()


_eventfd_read = os.eventfd_read
