"""PciAddress: the one parser of PCI addresses (DDDD:BB:DD.F)."""

import pytest

import vfio
from vfio.address import PciAddress
from vfio.errors import InvalidValue
from vfio.group import normalize_bdf
from vfio.pci.config import KernelResource, parse_resources


@pytest.mark.parametrize("text, want", [
    ("0000:00:04.0", (0, 0, 4, 0)),
    ("00:04.0", (0, 0, 4, 0)),
    ("  0000:3B:1F.7\n", (0, 0x3B, 0x1F, 7)),
    ("ABCD:ef:00.3", (0xABCD, 0xEF, 0, 3)),
    ("ffff:ff:1f.7", (0xFFFF, 0xFF, 0x1F, 7)),
])
def test_parse_and_str(text, want):
    a = PciAddress.parse(text)
    assert (a.domain, a.bus, a.device, a.function) == want
    assert str(a) == "{:04x}:{:02x}:{:02x}.{:x}".format(*want)
    assert normalize_bdf(text) == str(a)
    assert PciAddress.parse(str(a)) == a


def test_canonical_form_is_lower_case_with_domain():
    assert str(PciAddress.parse("0A:1B.2")) == "0000:0a:1b.2"
    assert str(PciAddress(1, 2, 3, 4)) == "0001:02:03.4"


@pytest.mark.parametrize("text", [
    "", " ", "0000:00:04", "0000:00:04.8", "00:4.0", "0:00:04.0", "00000:00:04.0", "0000:000:04.0",
    "0000:00:04.0.1", "0000-00-04.0", "0000:00:04.0 x", "x0000:00:04.0", "0000:00:20.0", "0000:g0:04.0",
    "vfio0", "0000:00:04.0/", "00:04.0:0",
])
def test_refuses_malformed_naming_the_text(text):
    with pytest.raises(InvalidValue) as ei:
        PciAddress.parse(text)
    assert isinstance(ei.value, ValueError) and isinstance(ei.value, vfio.Error)
    assert str(ei.value) == f"{text!r} is not a PCI address of the form DDDD:BB:DD.F"
    with pytest.raises(ValueError, match="is not a PCI address"):
        normalize_bdf(text)


@pytest.mark.parametrize("bad", [None, 4, b"0000:00:04.0"])
def test_refuses_non_strings(bad):
    with pytest.raises(InvalidValue, match="is not a PCI address"):
        PciAddress.parse(bad)


@pytest.mark.parametrize("parts", [(0x10000, 0, 0, 0), (0, 0x100, 0, 0), (0, 0, 0x20, 0), (0, 0, 0, 8),
                                   (-1, 0, 0, 0), (0, 0, 0, "1"), (0, 0, True, 0)])
def test_constructor_refuses_out_of_range_parts(parts):
    with pytest.raises(InvalidValue, match="PCI (domain|bus|device|function)"):
        PciAddress(*parts)


def test_devfn_and_slot():
    a = PciAddress.parse("0000:3b:1f.7")
    assert a.devfn == 0xFF
    assert PciAddress.parse("00:04.2").devfn == 0x22
    assert a.slot == "0000:3b:1f"


def test_ordering_is_domain_bus_device_function():
    names = ["0001:00:00.0", "0000:01:00.0", "0000:00:1f.0", "0000:00:02.1", "0000:00:02.0", "0000:00:10.0"]
    got = [str(a) for a in sorted(PciAddress.parse(n) for n in names)]
    assert got == ["0000:00:02.0", "0000:00:02.1", "0000:00:10.0", "0000:00:1f.0", "0000:01:00.0", "0001:00:00.0"]
    assert PciAddress(0, 0, 2, 0) < PciAddress(0, 0, 2, 1)
    assert PciAddress.parse("00:04.0") == PciAddress(0, 0, 4, 0)
    assert len({PciAddress.parse("00:04.0"), PciAddress.parse("0000:00:04.0")}) == 1


def test_frozen():
    a = PciAddress(0, 0, 4, 0)
    with pytest.raises(AttributeError):
        a.bus = 1


def test_find_in_and_sysfs_name():
    assert PciAddress.find_in("fixtures/0000:00:04.0.vfiorec") == PciAddress(0, 0, 4, 0)
    assert PciAddress.find_in("dev 00:04.0") is None          # only the full form with its domain
    assert PciAddress.find_in("") is None and PciAddress.find_in(None) is None
    assert PciAddress.is_sysfs_name("0000:00:04.0")
    for name in ("0000:00:04.0 ", "0000:00:04.0\n", "00:04.0", "0000:00:0A.0", "pci0000:00", "host0"):
        assert not PciAddress.is_sysfs_name(name), name


def test_parse_resources_names_source_and_line():
    text = ("0x00000000fe000000 0x00000000fe003fff 0x0000000000040200\n"
            "0x0000000000000000 0x0000000000000000 0x0000000000000000\n")
    assert parse_resources(text, "x/resource") == [KernelResource(0, 0xFE000000, 0xFE003FFF, 0x40200),
                                                    KernelResource(1, 0, 0, 0)]
    with pytest.raises(InvalidValue, match=r"x/resource: line 2 is not 'start end flags' in hex: '0x1 0x2'"):
        parse_resources("0x0 0x0 0x0\n0x1 0x2\n", "x/resource")


def test_capture_sysfs_uses_the_same_resource_parser(tmp_path):
    from vfio.record.capture import capture_sysfs
    d = tmp_path / "0000:00:05.0"
    d.mkdir()
    (d / "config").write_bytes(bytes(64))
    (d / "resource").write_text("0x0 0x0 0x0\n0x00000000fe000000 0x00000000fe003fff\n")
    with pytest.raises(InvalidValue) as ei:
        capture_sysfs("00:05.0", sysfs=str(tmp_path))
    assert str(ei.value).startswith(f"{d / 'resource'}: line 2 is not 'start end flags' in hex")
