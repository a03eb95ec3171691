"""Frozen value classes without :mod:`dataclasses`.

vfio-inspect's listing is timed against ``lspci`` as a whole process, and
``import dataclasses`` alone costs it some 7 ms of start-up: dataclasses
imports :mod:`inspect`, and with it ast, dis, tokenize and more; every
``@dataclass`` then compiles its methods at import.  The value classes the
listing builds (``PciAddress``, ``PciDevice``, ``IommuGroup``, ``Action``,
``Usage``, ``MemberStatus``, ``Viability``, and ``vfio.uapi.RawCap``, since on a
host with VFIO groups the listing asks the kernel through ``vfio.group`` and
``vfio.uapi``) derive from :class:`Value` instead, which gives them what ``@dataclass(frozen=True)`` did: the same
``repr()`` text, ``==`` and ``hash()`` over the fields (same class only),
no assignment or deletion of attributes, ``__match_args__``, and copy and
pickle through the instance ``__dict__`` as before; :class:`OrderedValue`
adds ``order=True``'s comparisons.  ``dataclasses.fields()``, ``asdict()``
and ``replace()`` do not apply to them.

A subclass declares its fields as class annotations, in order (they become
``_fields`` and ``__match_args__``), and writes its own plain ``__init__``
that stores them with ``self.__dict__.update(...)``, the one way in past
the frozen ``__setattr__``.
"""

from __future__ import annotations

from .errors import Error

__all__ = ["FrozenInstanceError", "OrderedValue", "Value"]


class FrozenInstanceError(Error, AttributeError):
    """Assignment to or deletion of an attribute of a :class:`Value`; an
    ``AttributeError``, as dataclasses' error of the same name is."""


class Value:
    """Base of the frozen value classes (see the module text)."""

    _fields = ()
    __match_args__ = ()

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        # as dataclasses do: a base's fields first, then this class's own annotations
        # (``cls.__annotations__`` is the class's own since Python 3.10)
        own = tuple(n for n in cls.__annotations__ if n not in cls._fields)
        cls._fields = cls._fields + own
        cls.__match_args__ = cls._fields

    def _astuple(self) -> tuple:
        d = self.__dict__
        return tuple([d[n] for n in self._fields])

    def __repr__(self) -> str:
        d = self.__dict__
        return f"{self.__class__.__qualname__}({', '.join(f'{n}={d[n]!r}' for n in self._fields)})"

    def __eq__(self, other):
        if other.__class__ is self.__class__:
            return self._astuple() == other._astuple()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._astuple())

    def __setattr__(self, name, value):
        raise FrozenInstanceError(f"cannot assign to field {name!r}")

    def __delattr__(self, name):
        raise FrozenInstanceError(f"cannot delete field {name!r}")


class OrderedValue(Value):
    """A :class:`Value` ordered as ``@dataclass(order=True)`` orders: by its
    fields in order, against the same class only."""

    def __lt__(self, other):
        if other.__class__ is self.__class__:
            return self._astuple() < other._astuple()
        return NotImplemented

    def __le__(self, other):
        if other.__class__ is self.__class__:
            return self._astuple() <= other._astuple()
        return NotImplemented

    def __gt__(self, other):
        if other.__class__ is self.__class__:
            return self._astuple() > other._astuple()
        return NotImplemented

    def __ge__(self, other):
        if other.__class__ is self.__class__:
            return self._astuple() >= other._astuple()
        return NotImplemented
