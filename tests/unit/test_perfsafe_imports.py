"""Start-up laziness: the vfio-inspect listing imports only what it uses, and the
lazily loaded package faces (vfio, vfio.pci) still offer every name they did."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.paths import GUEST_TREE, REPO

# what the listing does not use: the fd layer, config decoding, vfio-assign's state
# code (without a state file), and the standard modules only other paths need
NOT_FOR_THE_LISTING = {"vfio.device", "vfio.uapi", "vfio.container", "vfio.group", "vfio.dma", "vfio.iommufd",
                       "vfio.open", "vfio.pci.config", "vfio.pci.vconfig", "vfio.record", "vfio.host.assign",
                       "json", "argparse", "ctypes", "subprocess", "socket", "asyncio", "datetime", "tempfile",
                       # mdevs and device-tree devices, on a host with neither
                       "vfio.host.mdev", "vfio.platform",
                       # ~7 ms of start-up with the inspect module it loads: the listing's values are
                       # vfio._value classes, and only code above that some hosts need uses dataclasses
                       "dataclasses", "inspect"}
#: what that code brings along when a host needs it after all
WITH_DATACLASSES = {"dataclasses", "inspect"}


def modules_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint('\\n'.join(sys.modules))"],
                         cwd=REPO, capture_output=True, text=True, timeout=120, check=True).stdout
    return set(out.split())


@pytest.mark.skipif(not os.path.isdir("/sys/bus/pci/devices"), reason="needs a sysfs")
def test_the_listing_imports_nothing_it_does_not_use():
    floor = modules_after("pass")
    used = modules_after("import io\nfrom vfio.host import inspect\ninspect.main([], out=io.StringIO())")
    unused = (used - floor) & NOT_FOR_THE_LISTING
    if os.path.exists("/run/vfio-assign/state.json") or os.path.exists("/run/vfio-assign/platform-state.json"):
        unused -= {"vfio.host.assign", *WITH_DATACLASSES}   # then the listing reads it
    if os.path.exists("/sys/class/mdev_bus") or os.path.exists("/sys/bus/mdev/devices"):
        unused -= {"vfio.host.mdev", *WITH_DATACLASSES}     # then it lists mdev parents and mdevs
    if os.path.exists("/sys/firmware/devicetree/base"):
        unused -= {"vfio.platform", *WITH_DATACLASSES}      # then it lists device-tree devices
    if os.path.isdir("/sys/kernel/iommu_groups") and os.listdir("/sys/kernel/iommu_groups"):
        # then viability asks the kernel (VFIO_GROUP_GET_STATUS on /dev/vfio/N): the group and the
        # ioctl layer are used, not the rest of the fd layer (tests/kernel/test_inspect_kernel_view.py
        # checks that where a group is bound)
        unused -= {"vfio.uapi", "vfio.group", "ctypes"}
    assert not unused, f"the listing imported {sorted(unused)}"
    assert "vfio.pci.ids" in used and "vfio.host.inuse" in used     # and it did run


def test_the_listing_of_a_captured_tree_with_groups_imports_nothing_it_does_not_use():
    floor = modules_after("pass")
    used = modules_after(f"""
import io
from vfio.host import inspect
from vfio.host.sysfs import Host
rep = inspect.host_report(Host({GUEST_TREE!r}), inspect.Names(), ask_kernel=False)
assert rep["groups"], "the q35 guest tree has IOMMU groups"
inspect.render_host(rep, io.StringIO())
""")
    unused = (used - floor) & NOT_FOR_THE_LISTING
    assert not unused, f"the listing imported {sorted(unused)}"


def test_the_package_faces_offer_every_name_lazily():
    code = """
import vfio, vfio.pci, sys
assert "vfio.device" not in sys.modules and "vfio.pci.config" not in sys.modules
from vfio import *
import vfio as v
for name in v.__all__:
    assert getattr(v, name) is globals()[name], name
for name in vfio.pci.__all__:
    getattr(vfio.pci, name)
assert v.uapi.__name__ == "vfio.uapi" and "open_pci_device" in dir(v) and "ConfigSpace" in dir(vfio.pci)
from vfio.pci import ConfigSpace, PciIds
import vfio.open, vfio.sysfs, vfio.group, vfio.address
assert vfio.open.available_interfaces is vfio.sysfs.available_interfaces is v.available_interfaces
assert vfio.group.normalize_bdf is vfio.address.normalize_bdf is v.normalize_bdf
for bad in (lambda: v.no_such_name, lambda: vfio.pci.no_such_name):
    try:
        bad()
    except AttributeError:
        pass
    else:
        raise AssertionError("an unknown name must raise AttributeError")
print("ok")
"""
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "ok", r.stderr


@pytest.mark.parametrize("argv", [[], ["0000:00:03.0"], ["1af4:1041", "some.vfiorec", "00:04.0"]])
def test_positional_only_arguments_parse_as_argparse_parses_them(argv):
    from vfio.host import inspect
    fast = inspect._parse_args(argv)
    assert not hasattr(fast, "_get_kwargs")                 # the no-argparse path was taken
    assert vars(fast) == vars(inspect._parser().parse_args(argv))


@pytest.mark.parametrize("argv", [["--json"], ["-h"], ["", "x"], ["--root", "/", "x"], ["-"]])
def test_anything_else_goes_through_argparse(argv, capsys):
    from vfio.host import inspect
    try:
        ns = inspect._parse_args(argv)
    except SystemExit:
        return                                              # --help, usage errors: argparse's own
    assert hasattr(ns, "_get_kwargs")
