"""Ownership of fds: every owning object is a context manager over its close().

(Mappings are owned through :mod:`vfio.memory`, whose ``release`` closes one.)
"""

import os


class Resource:
    """Mixin: ``with obj:`` closes it on exit.  Subclasses define an idempotent ``close()``."""

    __slots__ = ()

    def close(self) -> None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class OwnedFd(Resource):
    """Mixin: an object that owns one file descriptor, ``fd`` (-1 once closed).

    ``close()`` is idempotent: it runs :meth:`_release` (what lives in the fd and
    must go first: DMA mappings, IOASes, container membership), then closes the
    fd even when that failed; ``fd`` is -1 before ``os.close`` runs, so nothing
    closes it twice (the number may already belong to another open file).
    """

    __slots__ = ()
    fd = -1        # until the subclass's __init__ opens it: close() of a half-made object is a no-op

    def _release(self) -> None:
        """Undo what lives in the fd, before it closes (nothing by default)."""

    @property
    def closed(self) -> bool:
        return self.fd < 0

    def close(self) -> None:
        if self.fd < 0:
            return
        try:
            self._release()
        finally:
            fd, self.fd = self.fd, -1
            os.close(fd)


class Shared(Resource):
    """Mixin: an fd several owners use at once -- a group with several devices open
    through it, a container with several groups in it, an IOAS several devices are
    attached to.

    Each user holds a :class:`Lease` and releases it when done.  An object created
    *for* its users (``lease(adopt=True)`` by whoever opened it) closes when the last
    lease is released; an object someone opened and owns stays open for them to close.
    """

    __slots__ = ()
    _leases = 0
    _adopted = False

    def lease(self, adopt: bool = False) -> "Lease":
        """A new lease; ``adopt``: the object now belongs to its leases."""
        if adopt:
            self._adopted = True
        return Lease(self)

    @property
    def users(self) -> int:
        """How many leases are held."""
        return self._leases


class Lease(Resource):
    """One user's hold on a :class:`Shared` object; ``close()`` releases it (idempotent)."""

    __slots__ = ("target",)

    def __init__(self, target: Shared):
        self.target = target
        target._leases += 1

    def close(self) -> None:
        target, self.target = self.target, None
        if target is None:
            return
        target._leases -= 1
        if target._leases == 0 and target._adopted:
            target.close()
