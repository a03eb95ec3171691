"""tools/vfio-harness's initramfs, its cache key and its options, checked on the host.

The initramfs is cached under a key; a key that misses something that goes into
the image serves a stale image (e.g. one without virtio_iommu, and the
virtio-iommu guest's 9p root then never appears).  ``--initrd-only`` builds or
finds the image and prints its path without booting, so these tests need no
QEMU, only the stock kernel's modules (tools/setup.sh installs them).
"""

from __future__ import annotations

import glob
import gzip
import os
import re
import shutil
import subprocess

import pytest

from tests.paths import REPO as ROOT
HARNESS = os.path.join(ROOT, "tools", "vfio-harness")

needs_stock_kernel = pytest.mark.skipif(
    not glob.glob("/lib/modules/*/kernel/drivers/iommu/virtio-iommu.ko*") or not os.path.exists("/bin/busybox")
    or shutil.which("cpio") is None,
    reason="needs the stock guest kernel's modules, busybox-static and cpio (tools/setup.sh)")


def _run(harness: str, cache: str, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, XDG_CACHE_HOME=cache)
    return subprocess.run([harness, *args], capture_output=True, text=True, env=env, timeout=300)


def _cpio_names(path: str) -> dict[str, bytes]:
    """Member name -> contents of a gzip'd newc cpio archive (the format the harness writes)."""
    data, out, off = gzip.open(path).read(), {}, 0
    while True:
        hdr = data[off:off + 110]
        assert hdr[:6] == b"070701", f"bad cpio header at {off}"
        namesize, filesize = int(hdr[94:102], 16), int(hdr[54:62], 16)
        name = data[off + 110:off + 110 + namesize - 1].decode()
        off = (off + 110 + namesize + 3) & ~3
        if name == "TRAILER!!!":
            return out
        out[name] = data[off:off + filesize]
        off = (off + filesize + 3) & ~3


@needs_stock_kernel
def test_initramfs_loads_virtio_iommu_between_virtio_pci_and_9p(tmp_path):
    r = _run(HARNESS, str(tmp_path), "--initrd-only")
    assert r.returncode == 0, r.stderr
    members = _cpio_names(r.stdout.strip())
    order = members["mods/order"].decode().split()
    assert "virtio-iommu.ko" in order, order
    # virtio_pci (built into Debian's 6.12, else a module listed earlier) probes the
    # virtio-iommu; 9p comes after it: VIOT defers the 9p devices' probe until then
    assert order.index("virtio-iommu.ko") < order.index("9pnet_virtio.ko"), order
    if "virtio_pci.ko" in order:
        assert order.index("virtio_pci.ko") < order.index("virtio-iommu.ko"), order
    assert all(f"mods/{m}" in members for m in order)


@needs_stock_kernel
def test_initramfs_cache_key_covers_the_module_list(tmp_path):
    # A copy of the harness whose only change is one more module in the list must
    # not be served the cached image built from the original list.
    cache = str(tmp_path / "cache")
    first = _run(HARNESS, cache, "--initrd-only")
    assert first.returncode == 0, first.stderr
    text = open(HARNESS).read()
    edited, n = re.subn(r'^(init_mods=")', r"\1vfio ", text, count=1, flags=re.M)
    assert n == 1, "the harness's init_mods list moved; update this test"
    copy = tmp_path / "vfio-harness"
    copy.write_text(edited)
    copy.chmod(0o755)
    (tmp_path / "build-kernel.sh").symlink_to(os.path.join(ROOT, "tools", "build-kernel.sh"))
    second = _run(str(copy), cache, "--initrd-only")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() != first.stdout.strip()
    assert "vfio.ko" in _cpio_names(second.stdout.strip())["mods/order"].decode().split()
    # and the same list again hits the cache
    assert _run(HARNESS, cache, "--initrd-only").stdout == first.stdout


def test_bad_iommu_is_a_usage_error():
    r = subprocess.run([HARNESS, "--iommu", "amd", "--", "true"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--iommu must be intel, virtio or none" in r.stderr
