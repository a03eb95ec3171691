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
