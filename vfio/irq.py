"""Eventfd interrupts.

VFIO delivers a device interrupt by signalling an eventfd the user handed to
``VFIO_DEVICE_SET_IRQS`` (``DATA_EVENTFD | ACTION_TRIGGER``): each vector of an
IRQ index (INTx, MSI, MSI-X, ERR, REQ on vfio-pci) gets its own eventfd, whose
counter the kernel increments per interrupt.  The same fds can be handed to KVM
as irqfds.  Level-triggered INTx is *automasked*: after it fires the kernel
masks it until the user unmasks (SET_IRQS ``ACTION_UNMASK``, or a resample
eventfd).

This module owns the eventfd objects (:class:`EventFd`) and the ways to wait
on many of them (:class:`Dispatcher` over ``selectors``, and an ``asyncio``
wait).  Programming them into the device is :class:`vfio.device.Device`'s job.
"""

from __future__ import annotations

import errno
import os
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

    One ``epoll`` (via ``selectors``) for any number of vectors; handlers get
    ``(eventfd, count)``.  Does not own the eventfds.
    """

    def __init__(self):
        self._sel = selectors.DefaultSelector()

    def add(self, efd: EventFd, handler: Callable[[EventFd, int], None]) -> None:
        self._sel.register(efd.fileno(), selectors.EVENT_READ, (efd, handler))

    def add_all(self, efds: Iterable[EventFd], handler: Callable[[EventFd, int], None]) -> None:
        for e in efds:
            self.add(e, handler)

    def remove(self, efd: EventFd) -> None:
        self._sel.unregister(efd.fileno())

    def poll(self, timeout: float | None = 0) -> int:
        """Dispatch whatever is pending (waiting up to ``timeout``); returns how many handlers ran."""
        ran = 0
        for key, _ in self._sel.select(timeout):
            efd, handler = key.data
            n = efd.read()
            if n:
                handler(efd, n)
                ran += 1
        return ran

    def close(self) -> None:
        self._sel.close()

