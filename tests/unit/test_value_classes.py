"""The listing's value classes (vfio._value; with ``vfio.uapi.RawCap``, since the
listing asks the kernel through the fd layer on a host with VFIO groups) behave
as the frozen dataclasses they replaced: each is checked against an oracle here, the same fields
declared with ``@dataclass`` as the class had them before.

The oracles carry the real classes' names, so their ``repr()`` text is what
the real class's must be; the real classes are reached through their modules.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
import pickle
import weakref
from dataclasses import dataclass, field
from types import SimpleNamespace

import pytest

from vfio import _value, address, errors, uapi
from vfio.host import inuse, sysfs, viability

from tests.paths import SYSFS_TREES

# ---- the oracles: the classes as they were declared before -------------------------------

_LIMITS = (("domain", 0xFFFF), ("bus", 0xFF), ("device", 0x1F), ("function", 0x7))


@dataclass(frozen=True, order=True)
class PciAddress:
    domain: int
    bus: int
    device: int
    function: int

    def __post_init__(self):
        for name, top in _LIMITS:
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= top:
                raise errors.InvalidValue(f"PCI {name} {v!r} is not an integer from 0 to {top:#x}")


@dataclass(frozen=True)
class Usage:
    bdf: str
    kind: str
    what: str
    detail: str


@dataclass(frozen=True)
class Action:
    kind: str
    path: str = ""
    value: str = ""


@dataclass(frozen=True)
class PciDevice:
    bdf: str
    vendor: int
    device: int
    subsystem_vendor: int
    subsystem_device: int
    class_code: int
    revision: int
    driver: str | None
    driver_override: str | None
    iommu_group: str | None
    path: str
    boot_vga: bool = False
    numa_node: int | None = None


@dataclass(frozen=True)
class IommuGroup:
    number: str
    devices: tuple = field(default_factory=tuple)
    type: str | None = None
    others: tuple = ()


@dataclass(frozen=True)
class MemberStatus:
    bdf: str
    driver: str | None
    ok: bool
    reason: str


@dataclass(frozen=True)
class Viability:
    group: str
    viable: bool
    members: tuple = field(default_factory=tuple)
    source: str = "sysfs"
    kernel_flags: int | None = None
    note: str = ""


@dataclass(frozen=True)
class RawCap:
    id: int
    version: int
    offset: int
    data: bytes


ORACLE = SimpleNamespace(PciAddress=PciAddress, Usage=Usage, Action=Action, PciDevice=PciDevice,
                         IommuGroup=IommuGroup, MemberStatus=MemberStatus, Viability=Viability, RawCap=RawCap)
REAL = SimpleNamespace(PciAddress=address.PciAddress, Usage=inuse.Usage, Action=sysfs.Action,
                       PciDevice=sysfs.PciDevice, IommuGroup=sysfs.IommuGroup,
                       MemberStatus=viability.MemberStatus, Viability=viability.Viability, RawCap=uapi.RawCap)
NAMES = tuple(vars(ORACLE))


# ---- sample values: each a function of the namespace, so nested values are of the same side ----

def _dev(ns, bdf="0000:00:04.0", driver="vfio-pci"):
    return ns.PciDevice(bdf, 0x1234, 0x11E8, 0x1AF4, 0x1100, 0x00FF00, 0x10, driver, None, "3",
                        f"sys/devices/pci0000:00/{bdf}")


def _member(ns, ok=True):
    return ns.MemberStatus("0000:00:04.0", "vfio-pci" if ok else "e1000e", ok, "why")


#: name -> [(args, kwargs) builders]: positional, keyword, defaults left out, mixed
SAMPLES = {
    "PciAddress": [
        lambda ns: ((0, 0, 4, 0), {}),
        lambda ns: ((), dict(domain=0xFFFF, bus=0xFF, device=0x1F, function=7)),
        lambda ns: ((1, 2), dict(function=3, device=4)),
    ],
    "Usage": [
        lambda ns: (("0000:00:02.0", "rootfs", "/dev/vda", "holds the root filesystem"), {}),
        lambda ns: ((), dict(detail="d", what="eth0", kind="network", bdf="0000:00:03.0")),
    ],
    "Action": [
        lambda ns: (("write", "/sys/bus/pci/devices/0000:00:04.0/driver_override", "vfio-pci"), {}),
        lambda ns: (("modprobe",), {}),
        lambda ns: (("chown",), dict(value="0:-1")),
        lambda ns: ((), dict(kind="write", path="/x")),
    ],
    "PciDevice": [
        lambda ns: ((("0000:00:04.0", 0x1234, 0x11E8, 0x1AF4, 0x1100, 0xFF00, 0x10, "vfio-pci", "vfio-pci", "3",
                      "sys/devices/pci0000:00/0000:00:04.0", True, 0)), {}),
        lambda ns: (("0000:00:01.0", 0x8086, 0x10D3, 0, 0, 0x020000, 0, None, None, None, "p"), {}),
        lambda ns: ((), dict(bdf="0000:00:01.0", vendor=1, device=2, subsystem_vendor=3, subsystem_device=4,
                             class_code=5, revision=6, driver=None, driver_override=None, iommu_group=None,
                             path="p", numa_node=1)),
    ],
    "IommuGroup": [
        lambda ns: (("3", (_dev(ns), _dev(ns, "0000:00:04.1", None)), "DMA", ("platform-dev",)), {}),
        lambda ns: (("7",), {}),
        lambda ns: (("8",), dict(type="identity")),
        lambda ns: ((), dict(number="9", others=("a-uuid",), devices=(_dev(ns),))),
    ],
    "MemberStatus": [
        lambda ns: (("0000:00:04.0", None, True, "0000:00:04.0 has no driver"), {}),
        lambda ns: ((), dict(bdf="x", driver="e1000e", ok=False, reason="bound")),
    ],
    "Viability": [
        lambda ns: (("3", False, (_member(ns), _member(ns, False)), "kernel", 3, "n"), {}),
        lambda ns: (("3", True), {}),
        lambda ns: (("4", True, (_member(ns),)), dict(note="captured tree: kernel not asked")),
        lambda ns: ((), dict(group="5", viable=True, kernel_flags=1, source="kernel")),
    ],
    "RawCap": [
        lambda ns: ((1, 1, 0x30, bytes(range(16))), {}),
        lambda ns: ((), dict(data=b"", offset=0x18, version=2, id=3)),
    ],
}
CASES = [(name, i) for name in NAMES for i in range(len(SAMPLES[name]))]


def _pair(name, i):
    """(real value, oracle value) built from the same arguments."""
    build = SAMPLES[name][i]
    args, kw = build(REAL)
    oargs, okw = build(ORACLE)
    return getattr(REAL, name)(*args, **kw), getattr(ORACLE, name)(*oargs, **okw)


def _values(obj) -> tuple:
    return tuple(getattr(obj, n) for n in obj._fields)


# ---- the class as a whole -----------------------------------------------------------------------

@pytest.mark.parametrize("name", NAMES)
def test_fields_signature_and_match_args_are_the_dataclasses(name):
    real, oracle = getattr(REAL, name), getattr(ORACLE, name)
    names = tuple(f.name for f in dataclasses.fields(oracle))
    assert real._fields == names and real.__match_args__ == oracle.__match_args__ == names
    got, want = inspect.signature(real).parameters, inspect.signature(oracle).parameters
    assert [(p.name, p.kind) for p in got.values()] == [(p.name, p.kind) for p in want.values()]
    for n, p in want.items():
        f = oracle.__dataclass_fields__[n]
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else p.default
        assert got[n].default == default, n
    assert not dataclasses.is_dataclass(real)       # what the listing wanted rid of
    assert real.__doc__ and real.__module__.startswith("vfio.")


@pytest.mark.parametrize("name", NAMES)
def test_required_arguments_are_required(name):
    real, oracle = getattr(REAL, name), getattr(ORACLE, name)
    with pytest.raises(TypeError):
        oracle()
    with pytest.raises(TypeError):
        real()
    n = len(oracle.__dataclass_fields__)
    with pytest.raises(TypeError):
        real(*range(n + 1))
    with pytest.raises(TypeError):
        real(**{"no_such_field": 1, **{f: 0 for f in real._fields}})


# ---- each sample against its oracle -------------------------------------------------------------

@pytest.mark.parametrize("name, i", CASES)
def test_construction_and_repr(name, i):
    real, want = _pair(name, i)
    assert type(real) is getattr(REAL, name)
    assert repr(real) == repr(want)
    for n in real._fields:
        assert repr(getattr(real, n)) == repr(getattr(want, n)), n
    if type(real).__str__ is object.__str__:       # no __str__ of its own: str() is repr(), as before
        assert str(real) == str(want)


@pytest.mark.parametrize("name, i", CASES)
def test_eq_and_hash(name, i):
    a, want = _pair(name, i)
    b, _ = _pair(name, i)
    assert a is not b and a == b and not a != b and hash(a) == hash(b)
    assert hash(a) == hash(want)                    # the field tuple's hash, as the dataclass's
    assert a.__eq__(want) is NotImplemented and a != want and not a == want
    assert a.__eq__(_values(a)) is NotImplemented and a != _values(a)
    assert a.__eq__(None) is NotImplemented and a != None   # noqa: E711
    assert {a: 1}[b] == 1
    for j in range(len(SAMPLES[name])):
        if j != i:
            c, wc = _pair(name, j)
            assert (a == c) == (want == wc) and (a != c) == (want != wc)


@pytest.mark.parametrize("name, i", CASES)
def test_frozen_as_the_dataclass(name, i):
    real, want = _pair(name, i)
    for n in (*real._fields, "not_a_field"):
        msgs = []
        for target in (want, real):
            with pytest.raises(AttributeError) as assigning:
                setattr(target, n, 1)
            with pytest.raises(AttributeError) as deleting:
                delattr(target, n)
            msgs.append((str(assigning.value), str(deleting.value)))
        assert isinstance(assigning.value, _value.FrozenInstanceError)
        assert msgs[0] == msgs[1]
    assert repr(real) == repr(want)                 # nothing changed


@pytest.mark.parametrize("name, i", CASES)
def test_copy_and_pickle(name, i):
    real, want = _pair(name, i)
    for other in (copy.copy(real), copy.deepcopy(real),
                  *(pickle.loads(pickle.dumps(real, proto)) for proto in range(pickle.HIGHEST_PROTOCOL + 1))):
        assert type(other) is type(real) and other == real and hash(other) == hash(real)
        assert repr(other) == repr(want)
        with pytest.raises(AttributeError):
            setattr(other, real._fields[0], 1)


def _match(obj, n: int):
    """``match obj: case Cls(v0, ..., v{n-1})``: the captured values, or None."""
    names = [f"v{k}" for k in range(n)]
    code = (f"match obj:\n    case cls({', '.join(names)}):\n        got = ({''.join(v + ', ' for v in names)})\n"
            "    case _:\n        got = None\n")
    scope = {"obj": obj, "cls": type(obj)}
    exec(code, scope)
    return scope["got"]


@pytest.mark.parametrize("name, i", CASES)
def test_match_statement(name, i):
    real, want = _pair(name, i)
    n = len(real._fields)
    assert _match(real, n) == _values(real)
    assert repr(_match(real, 1)) == repr(_match(want, 1))
    for obj in (real, want):
        with pytest.raises(TypeError):
            _match(obj, n + 1)


def test_instances_keep_a_dict_and_weak_references_as_the_dataclasses_did():
    for name in NAMES:
        real, want = _pair(name, 0)
        assert list(vars(real)) == list(vars(want))
        assert weakref.ref(real)() is real


# ---- PciAddress: order=True and the validation of __post_init__ ---------------------------------

ADDRESSES = [(0, 0, 0, 0), (0, 0, 4, 0), (0, 0, 4, 1), (0, 1, 0, 0), (1, 0, 0, 0), (0, 0, 0x1F, 7),
             (0xFFFF, 0xFF, 0x1F, 7), (0, 0x10, 2, 3)]


def test_pci_address_orders_as_the_dataclass():
    real = [address.PciAddress(*t) for t in ADDRESSES]
    want = [PciAddress(*t) for t in ADDRESSES]
    assert [repr(a) for a in sorted(real)] == [repr(a) for a in sorted(want)]
    for a, wa in zip(real, want):
        for b, wb in zip(real, want):
            assert (a < b, a <= b, a > b, a >= b, a == b) == (wa < wb, wa <= wb, wa > wb, wa >= wb, wa == wb)
    a = real[1]
    for other in ((0, 0, 4, 0), want[1], None):
        for op in ("__lt__", "__le__", "__gt__", "__ge__"):
            assert getattr(a, op)(other) is NotImplemented
        with pytest.raises(TypeError):
            a < other                               # noqa: B015
        with pytest.raises(TypeError):
            a >= other                              # noqa: B015


@pytest.mark.parametrize("parts", [(0x10000, 0, 0, 0), (0, 0x100, 0, 0), (0, 0, 0x20, 0), (0, 0, 0, 8),
                                   (-1, 0, 0, 0), (True, 0, 0, 0), (0, 0, 4, "0"), (0, 0, 4.0, 0), (0, None, 0, 0)])
def test_pci_address_validation_is_the_post_init(parts):
    with pytest.raises(errors.InvalidValue) as want:
        PciAddress(*parts)
    with pytest.raises(errors.InvalidValue) as got:
        address.PciAddress(*parts)
    assert str(got.value) == str(want.value)
    with pytest.raises(errors.InvalidValue):
        address.PciAddress(**dict(zip(("domain", "bus", "device", "function"), parts)))


# ---- what the host model builds from a captured tree --------------------------------------------

def _as_oracle(obj):
    """The oracle twin of a real value, nested values too."""
    if isinstance(obj, tuple):
        return tuple(_as_oracle(x) for x in obj)
    if isinstance(obj, _value.Value):
        return getattr(ORACLE, type(obj).__name__)(*(_as_oracle(getattr(obj, n)) for n in obj._fields))
    return obj


def test_values_from_a_captured_tree_read_as_the_dataclasses_did():
    host = sysfs.Host(os.path.join(SYSFS_TREES, "q35-guest"))
    seen = []
    for dev in host.devices():
        seen.append(dev)
        seen.extend(inuse.usage_of(host, dev))
    for group in host.groups():
        seen.append(group)
        seen.append(viability.group_viability(host, group, ask_kernel=False))
    seen.append(address.PciAddress.parse(seen[0].bdf))
    assert {type(v).__name__ for v in seen} >= {"PciDevice", "Usage", "IommuGroup", "Viability", "PciAddress"}
    for v in seen:
        want = _as_oracle(v)
        assert repr(v) == repr(want) and hash(v) == hash(want)
