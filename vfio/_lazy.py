"""A package face that loads on first use (PEP 562), shared by :mod:`vfio` and :mod:`vfio.pci`.

``import vfio.host.inspect`` runs ``vfio/__init__.py`` (and ``vfio/pci/__init__.py``)
first; the host listing uses none of the fd layer or the config-space decoder, whose
imports used to be most of ``vfio-inspect``'s start-up.  So a package's public names
are listed in a table (module -> names) and each is imported the first time it is
asked for, then kept in the package's globals.  ``from vfio import Device``,
``vfio.Container`` and ``vfio.uapi`` (a submodule not imported yet) work as before.
"""

from __future__ import annotations

import importlib
from typing import Callable, Mapping


def lazy_face(package: str, namespace: dict, table: Mapping[str, tuple[str, ...]]
              ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of ``package`` whose globals are ``namespace``."""
    home = {name: mod for mod, names in table.items() for name in names}

    def __getattr__(name: str):
        mod = home.get(name)
        if mod is None:
            try:            # a submodule not imported yet
                return importlib.import_module(f"{package}.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"{package}.{name}":
                    raise
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f"{package}.{mod}"), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(home))

    return __getattr__, __dir__
