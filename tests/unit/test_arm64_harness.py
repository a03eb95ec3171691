"""The arm64 leg of the test harness, checked on the host without booting anything.

``tools/vfio-harness --arch arm64`` boots QEMU's ``virt`` machine with an SMMUv3 in
front of its PCIe bus, a kernel cross-built from tools/kernel/arm64.config and a root
made of Debian's arm64 packages (tools/arm64-rootfs).  What can go wrong without a
guest is checked here: the Kconfig fragment asks for every option the leg depends on
(and none of the x86-only ones that would silently vanish), the package list holds
what Python's stdlib needs, and the QEMU command line the harness builds has the
SMMUv3 machine, virtio-mmio shares and the PL011 console.  The QEMU line is captured
by running a copy of the harness whose kernel and root builders are stubs and whose
qemu-system-aarch64 is a script that records its arguments.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest

from tests.paths import REPO as ROOT

TOOLS = os.path.join(ROOT, "tools")
FRAGMENT = os.path.join(TOOLS, "kernel", "arm64.config")


def _fragment() -> dict[str, str]:
    """CONFIG_X -> value ('n' for "is not set") of tools/kernel/arm64.config."""
    out = {}
    for line in open(FRAGMENT):
        line = line.strip()
        if m := re.fullmatch(r"(CONFIG_\w+)=(.*)", line):
            out[m[1]] = m[2]
        elif m := re.fullmatch(r"# (CONFIG_\w+) is not set", line):
            out[m[1]] = "n"
    return out


# What the leg is for (issue 14): vfio-pci and vfio-platform behind SMMUv3 on the
# virt machine, iommufd + cdev, no-IOMMU, and the harness's own plumbing.
REQUIRED = [
    "VFIO", "VFIO_PCI", "VFIO_PLATFORM", "VFIO_PLATFORM_BASE", "VFIO_NOIOMMU", "IOMMUFD",
    "VFIO_DEVICE_CDEV", "VFIO_CONTAINER", "VFIO_IOMMU_TYPE1", "ARM_SMMU_V3", "ARM_GIC_V3",
    "ARM_GIC_V3_ITS", "PCI_MSI", "PCI_HOST_GENERIC", "OF", "VIRTIO_MMIO", "VIRTIO_CONSOLE",
    "NET_9P_VIRTIO", "9P_FS", "OVERLAY_FS", "FW_CFG_SYSFS", "SERIAL_AMBA_PL011",
    "SERIAL_AMBA_PL011_CONSOLE", "DEVTMPFS", "BLK_DEV_INITRD",
]


@pytest.mark.parametrize("opt", REQUIRED)
def test_fragment_enables_what_the_leg_needs(opt):
    assert _fragment().get(f"CONFIG_{opt}") == "y", f"tools/kernel/arm64.config lacks CONFIG_{opt}=y"


def test_fragment_has_no_x86_only_options():
    # build-kernel.sh fails on any fragment option missing from the final .config,
    # so an x86 symbol here would break the arm64 build rather than be ignored
    x86 = {"CONFIG_SERIAL_8250", "CONFIG_INTEL_IOMMU", "CONFIG_ACPI", "CONFIG_X86_X2APIC",
           "CONFIG_HPET_TIMER", "CONFIG_IRQ_REMAP", "CONFIG_64BIT"}
    assert not x86 & set(_fragment())


def test_build_kernel_knows_arm64_and_refuses_unknown_variants():
    r = subprocess.run([os.path.join(TOOLS, "build-kernel.sh"), "sparc"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "arm64" in r.stderr


def test_rootfs_package_list_covers_python_and_the_shell():
    r = subprocess.run([os.path.join(TOOLS, "arm64-rootfs"), "--print-packages"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    pkgs = r.stdout.split()
    # interpreter + stdlib, the per-run script's bash, busybox for the rest, and the
    # libraries of the stdlib modules the toolkit imports (ctypes, hashlib, zlib)
    for p in ["libc6", "bash", "busybox-static", "python3.11-minimal", "libpython3.11-minimal",
              "libpython3.11-stdlib", "libffi8", "libssl3", "zlib1g", "libexpat1"]:
        assert p in pkgs, p
    assert len(pkgs) == len(set(pkgs))
    assert subprocess.run([os.path.join(TOOLS, "arm64-rootfs"), "--bogus"],
                          capture_output=True, text=True).returncode == 2


# ---- the QEMU command line, from a harness copy with stub builders ------------------

FAKE_QEMU = """#!/bin/sh
printf '%s\\n' "$@" > "$QEMU_ARGS_OUT"
exit 0
"""


@pytest.fixture
def fake_tools(tmp_path):
    """A copy of tools/vfio-harness whose build-kernel.sh/arm64-rootfs are stubs, and a
    PATH whose qemu-system-* record their arguments to $QEMU_ARGS_OUT."""
    if shutil.which("cpio") is None or not os.path.exists("/bin/busybox"):
        pytest.skip("needs cpio and busybox-static (tools/setup.sh)")
    tools = tmp_path / "tools"
    tools.mkdir()
    shutil.copy(os.path.join(TOOLS, "vfio-harness"), tools / "vfio-harness")
    root = tmp_path / "aroot"
    (root / "bin").mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin" / "busybox")
    (tmp_path / "Image").write_bytes(b"not a kernel")
    (tools / "build-kernel.sh").write_text(f"#!/bin/sh\necho {tmp_path}/Image\n")
    (tools / "arm64-rootfs").write_text(f"#!/bin/sh\necho {root}\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for q in ("qemu-system-aarch64", "qemu-system-x86_64"):
        (bindir / q).write_text(FAKE_QEMU)
    for f in [*tools.iterdir(), *bindir.iterdir()]:
        f.chmod(0o755)
    return tmp_path


def _harness(base, *args: str) -> tuple[subprocess.CompletedProcess, list[str]]:
    out = base / "qemu-args"
    env = dict(os.environ, XDG_CACHE_HOME=str(base / "cache"), QEMU_ARGS_OUT=str(out),
               PATH=f"{base / 'bin'}:{os.environ['PATH']}")
    r = subprocess.run([str(base / "tools" / "vfio-harness"), *args], capture_output=True, text=True,
                       env=env, timeout=120, cwd=str(base))
    return r, (out.read_text().splitlines() if out.exists() else [])


def _device_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "-device"]


def test_arm64_command_line_has_smmuv3_virt_and_mmio_shares(fake_tools):
    r, argv = _harness(fake_tools, "--arch", "arm64", "--devices", "edu", "--", "true")
    # the fake QEMU reports no exit status: the harness's "guest crashed" code
    assert r.returncode == 125, r.stderr
    assert argv, r.stderr
    assert argv[argv.index("-machine") + 1] == "virt,gic-version=3,iommu=smmuv3"
    assert argv[argv.index("-cpu") + 1].startswith("max")
    assert argv[argv.index("-kernel") + 1] == str(fake_tools / "Image")
    devs = _device_args(argv)
    assert "edu" in devs
    # the harness's own virtio devices are virtio-mmio, outside the SMMU's PCIe bus
    nine_p = [d for d in devs if d.startswith("virtio-9p")]
    assert nine_p and all(d.startswith("virtio-9p-device,") for d in nine_p)
    assert any("mount_tag=hostroot" in d for d in nine_p)
    assert "virtconsole,chardev=status" in devs
    assert not any(d.startswith(("intel-iommu", "virtio-iommu")) for d in devs)
    # the 9p root is the arm64 root, never the host's /
    assert f"local,id=root,path={fake_tools / 'aroot'},security_model=none,readonly=on,multidevs=remap" in argv
    cmdline = argv[argv.index("-append") + 1]
    assert "console=ttyAMA0" in cmdline and "intel_iommu" not in cmdline
    assert "vfio_platform.reset_required=0" in cmdline


def test_arm64_without_iommu_drops_the_smmu_and_enables_noiommu(fake_tools):
    r, argv = _harness(fake_tools, "--arch", "arm64", "--iommu", "none", "--devices", "edu", "--", "true")
    assert r.returncode == 125, r.stderr
    assert argv[argv.index("-machine") + 1] == "virt,gic-version=3"
    assert "vfio.enable_unsafe_noiommu_mode=1" in argv[argv.index("-append") + 1]


def test_x86_command_line_is_still_q35(fake_tools):
    (fake_tools / "bz").write_bytes(b"x")
    r, argv = _harness(fake_tools, "--bzimage", str(fake_tools / "bz"), "--devices", "edu", "--", "true")
    assert r.returncode == 125, r.stderr
    assert argv[argv.index("-machine") + 1] == "q35"
    assert "intel-iommu,intremap=on" in _device_args(argv)
    assert "virtio-9p-pci,fsdev=root,mount_tag=hostroot" in _device_args(argv)


@pytest.mark.parametrize("args, msg", [
    (["--arch", "arm64", "--iommu", "intel"], "--iommu smmuv3 or none"),
    (["--arch", "arm64", "--kernel", "iommufd-container"], "one kernel"),
    (["--arch", "sparc"], "--arch must be x86_64 or arm64"),
])
def test_bad_arm64_options_are_usage_errors(args, msg):
    r = subprocess.run([os.path.join(TOOLS, "vfio-harness"), *args, "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2
    assert msg in r.stderr


# ---- a built root: every shared library Python's modules link against is in it ----

#: stdlib extension modules whose libraries tools/arm64-rootfs leaves out on purpose
#: (dbm, sqlite3, nis: nothing in the toolkit or its test dependencies imports them)
LEFT_OUT = {"_dbm", "_sqlite3", "nis"}


def _built_roots() -> list[str]:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    base = os.path.join(cache, "vfio-toolkit", "arm64-root")
    return sorted(os.path.join(base, d) for d in (os.listdir(base) if os.path.isdir(base) else [])
                  if d.startswith("root-") and os.path.exists(os.path.join(base, d, "usr/bin/python3")))


def _needed(elf: str) -> list[str]:
    out = subprocess.run(["readelf", "-d", elf], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


@pytest.mark.skipif(not _built_roots() or shutil.which("readelf") is None,
                    reason="no arm64 root built yet (tools/arm64-rootfs) or no readelf")
def test_built_root_resolves_every_library_python_links_against():
    root = _built_roots()[-1]
    dynload = os.path.join(root, "usr/lib/python3.11/lib-dynload")
    elves = [os.path.join(root, "usr/bin/python3.11")] + [
        os.path.join(dynload, f) for f in sorted(os.listdir(dynload))
        if f.endswith(".so") and f.split(".")[0] not in LEFT_OUT]
    # the modules the toolkit's own imports need are among them
    names = {os.path.basename(e).split(".")[0] for e in elves}
    assert {"_ctypes", "mmap", "_hashlib", "_json"} <= names
    dirs = [os.path.join(root, d) for d in ("lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu", "lib")]
    missing = [(os.path.basename(e), n) for e in elves for n in _needed(e)
               if not any(os.path.exists(os.path.join(d, n)) for d in dirs)]
    assert not missing, f"{root}: unresolved shared libraries {missing}"
    # and they are arm64 binaries, not the host's
    with open(elves[0], "rb") as f:
        hdr = f.read(20)
    assert hdr[:4] == b"\x7fELF" and int.from_bytes(hdr[18:20], "little") == 183   # EM_AARCH64
