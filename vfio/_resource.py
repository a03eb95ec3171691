"""Ownership of fds and mappings: every owning object is a context manager over its close()."""


class Resource:
    """Mixin: ``with obj:`` closes it on exit.  Subclasses define an idempotent ``close()``."""

    __slots__ = ()

    def close(self) -> None:  # pragma: no cover - always overridden
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
