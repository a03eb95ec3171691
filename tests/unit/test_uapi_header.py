"""vfio.uapi against the kernel's own headers, compiled with gcc.

Every integer constant (ioctl numbers included), every struct size and every
field offset defined in :mod:`vfio.uapi` is printed by a C program built
against

* the system's ``linux/vfio.h`` (Debian's linux-libc-dev, installed by
  tools/setup.sh; 6.1 on Debian 12), for the names that header defines, and
* the Linux 6.12 uapi headers from Debian's linux-source-6.12 tarball, for all
  of them,

and compared with the Python values.  Definitions newer than the system header
are also pinned in ``PINNED`` to the values of the 6.12 header, so the check
does not depend on the tarball alone.
"""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import subprocess
import tarfile

import pytest

from vfio import uapi

SYSTEM_INCLUDE = "/usr/include"
KSRC_TARBALL = "/usr/src/linux-source-6.12.tar.xz"

# names in vfio.uapi that are not uapi definitions (kernel-internal or our own)
NOT_IN_HEADER = {"VFIO_PCI_OFFSET_SHIFT", "MAX_CAPS"}

# Values from Linux 6.12's include/uapi/linux/{vfio,iommufd}.h for what the 6.1
# system header lacks (printed by this test's C program against the 6.12 tree).
PINNED = {
    "VFIO_DEVICE_BIND_IOMMUFD": 0x3B76,
    "VFIO_DEVICE_ATTACH_IOMMUFD_PT": 0x3B77,
    "VFIO_DEVICE_DETACH_IOMMUFD_PT": 0x3B78,
    "IOMMU_DESTROY": 0x3B80,
    "IOMMU_IOAS_ALLOC": 0x3B81,
    "IOMMU_IOAS_IOVA_RANGES": 0x3B84,
    "IOMMU_IOAS_MAP": 0x3B85,
    "IOMMU_IOAS_UNMAP": 0x3B86,
    "IOMMU_HWPT_ALLOC": 0x3B89,
    "IOMMU_GET_HW_INFO": 0x3B8A,
    "sizeof(vfio_device_bind_iommufd)": 16,
    "sizeof(vfio_device_attach_iommufd_pt)": 12,
    "sizeof(vfio_device_detach_iommufd_pt)": 8,
    "sizeof(iommu_ioas_map)": 40,
    "sizeof(iommu_ioas_iova_ranges)": 32,
    "sizeof(iommu_hwpt_alloc)": 48,
    "sizeof(iommu_hw_info)": 40,
    "VFIO_DEVICE_FEATURE_BUS_MASTER": 10,
}


def _strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def python_values() -> dict:
    """Every checkable definition of vfio.uapi: constants, sizeof(struct), offsetof(struct, field)."""
    out = {}
    for name, val in vars(uapi).items():
        if name in NOT_IN_HEADER or not name.isupper() or not isinstance(val, int) or isinstance(val, bool):
            continue
        if name.startswith(("VFIO_", "IOMMU_", "IOMMUFD_")):
            out[name] = val
    for name, cls in vars(uapi).items():
        if isinstance(cls, type) and issubclass(cls, ctypes.Structure) and \
                name.startswith(("vfio_", "iommu_")):
            out[f"sizeof({name})"] = ctypes.sizeof(cls)
            anon = set(getattr(cls, "_anonymous_", ()))
            for fname, ftype in cls._fields_:
                members = [m for m, _ in ftype._fields_] if fname in anon else [fname]
                for m in members:
                    out[f"offsetof({name},{m})"] = getattr(cls, m).offset
    return out


def _fields_of(struct_name: str) -> list:
    cls = getattr(uapi, struct_name)
    anon = set(getattr(cls, "_anonymous_", ()))
    out = []
    for fname, ftype in cls._fields_:
        out += [m for m, _ in ftype._fields_] if fname in anon else [fname]
    return out


def _key_present(key: str, header_text: str) -> bool:
    m = re.match(r"(?:sizeof|offsetof)\((\w+)", key)
    if m:
        body = re.search(rf"\bstruct\s+{m.group(1)}\s*\{{(.*?)\n\}};", header_text, flags=re.S)
        if body is None:
            return False
        fields = [key.split(",")[1].rstrip(")")] if key.startswith("offsetof") else \
            [f for f in _fields_of(m.group(1))]
        # a struct that grew since this header (vfio_device_info gained `pad` after 6.1)
        # has a different size there: compare sizes only where every field exists
        return all(re.search(rf"\b{re.escape(f)}\b", body.group(1)) for f in fields)
    return re.search(rf"\b{key}\b", header_text) is not None


def c_values(include_dir: str, keys, tmp_path) -> dict:
    lines = ["#include <stdio.h>", "#include <stddef.h>", "#include <stdint.h>",
             "#include <linux/vfio.h>"]
    if os.path.exists(os.path.join(include_dir, "linux", "iommufd.h")):
        lines.append("#include <linux/iommufd.h>")
    lines.append("int main(void) {")
    for k in keys:
        if k.startswith("sizeof("):
            expr = f"sizeof(struct {k[7:-1]})"
        elif k.startswith("offsetof("):
            s, f = k[9:-1].split(",")
            expr = f"offsetof(struct {s}, {f})"
        else:
            expr = k
        lines.append(f'  printf("%s %llu\\n", "{k}", (unsigned long long)(uint32_t)({expr}));')
    lines += ["  return 0;", "}"]
    src = tmp_path / "abi.c"
    src.write_text("\n".join(lines) + "\n")
    exe = tmp_path / "abi"
    # raw (not headers_install-ed) uapi headers still carry the sparse annotation __user
    inc = [] if include_dir == SYSTEM_INCLUDE else ["-I", include_dir]
    r = subprocess.run(["gcc", "-std=gnu11", "-w", "-D__user=", *inc, "-o", str(exe), str(src)], capture_output=True, text=True)
    assert r.returncode == 0, f"gcc against {include_dir} failed:\n{r.stderr[:4000]}"
    out = subprocess.run([str(exe)], capture_output=True, text=True, check=True).stdout
    return {k: int(v) for k, v in (line.rsplit(" ", 1) for line in out.splitlines())}


def _header_text(include_dir: str) -> str:
    text = ""
    for h in ("vfio.h", "iommufd.h"):
        p = os.path.join(include_dir, "linux", h)
        if os.path.exists(p):
            text += open(p).read()
    return _strip_comments(text)


def _compare(include_dir: str, tmp_path, require_all: bool):
    py = python_values()
    text = _header_text(include_dir)
    keys = [k for k in py if _key_present(k, text)]
    missing = sorted(set(py) - set(keys))
    if require_all:
        assert not missing, f"defined in vfio.uapi but not in {include_dir}'s headers: {missing[:20]}"
    c = c_values(include_dir, keys, tmp_path)
    wrong = {k: (hex(py[k] & 0xFFFFFFFF), hex(c[k])) for k in keys if py[k] & 0xFFFFFFFF != c[k]}
    assert not wrong, f"vfio.uapi disagrees with {include_dir}: (python, C) = {wrong}"
    too_wide = [k for k in keys if not 0 <= py[k] < 1 << 32]
    assert not too_wide, f"constants outside u32 (the C side is printed as u32): {too_wide}"
    return keys, missing


@pytest.fixture(scope="session")
def ksrc_include(tmp_path_factory):
    assert os.path.exists(KSRC_TARBALL), f"{KSRC_TARBALL} missing: tools/setup.sh installs linux-source-6.12"
    d = tmp_path_factory.mktemp("ksrc")
    members = ["linux-source-6.12/include/uapi/linux/vfio.h", "linux-source-6.12/include/uapi/linux/iommufd.h"]
    r = subprocess.run(["tar", "-xf", KSRC_TARBALL, "-C", str(d), *members], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    inc = d / "include"
    (inc / "linux").mkdir(parents=True)
    for m in members:
        shutil.copy(d / m, inc / "linux" / os.path.basename(m))
    return str(inc)


def test_system_header_agrees(tmp_path):
    assert os.path.exists(os.path.join(SYSTEM_INCLUDE, "linux", "vfio.h")), "linux-libc-dev is not installed"
    keys, missing = _compare(SYSTEM_INCLUDE, tmp_path, require_all=False)
    # the installed header must cover the classic ABI; what it lacks must be pinned or newer-only
    assert "VFIO_DEVICE_GET_INFO" in keys and "sizeof(vfio_irq_set)" in keys
    for k in PINNED:
        assert k in keys or k in missing


def test_kernel_612_header_agrees_fully(tmp_path, ksrc_include):
    keys, missing = _compare(ksrc_include, tmp_path, require_all=True)
    assert len(keys) > 400


def test_pinned_values():
    py = python_values()
    for k, v in PINNED.items():
        assert py[k] == v, f"{k}: python {py[k]:#x}, kernel 6.12 {v:#x}"


def test_well_known_numbers():
    # from the kernel header, as the team guide quotes them
    assert uapi.VFIO_DEVICE_GET_INFO == 0x3B6B
    assert ctypes.sizeof(uapi.vfio_irq_set) == 20
    assert ctypes.sizeof(uapi.vfio_region_info) == 32
    assert ctypes.sizeof(uapi.vfio_iommu_type1_info) == 24
    assert uapi.VFIO_GROUP_GET_DEVICE_FD == 0x3B6A
