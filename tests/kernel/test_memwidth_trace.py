"""Width-exactness on the wire: what QEMU's memory core sees of MappedRegion's accesses.

``MappedRegion.read8`` .. ``write64`` promise one access of exactly their width
at exactly their offset, and bulk ``read``/``write`` promise the split
documented in :func:`vfio.memory.runs`.  Here the promise is checked where it
matters, at the device: the guest runs under QEMU with the
``memory_region_ops_read``/``memory_region_ops_write`` trace events on
(``tools/vfio-harness --qemu-trace 'memory_region_ops_*'``, which logs them to a
file of the shared work tree and exports its path as VFIO_HARNESS_QEMU_TRACE),
and each access is matched against the trace lines it produced.

The trace shows the size a device model receives after QEMU splits or widens
an access to the sizes its implementation takes, so the devices are chosen for
taking the widths as they come: a modern-only virtio-pci function (virtio-rng;
its regions take 1 to 4 bytes unsplit) for 1, 2 and 4 bytes, and edu (4 and 8
bytes) for 4 and 8.  Only side-effect-free registers are touched: the virtio
device-config window (virtio-rng has no config: reads answer all-ones, writes
are dropped) and edu's DMA address/count/command registers (which start
nothing unless the command's run bit is written).

Each access is followed by a sentinel write of a fresh value; the lines of the
device's BARs between the position of the log before the access and that
sentinel line are what the access produced (QEMU may buffer the log, so the
test reads until the sentinel shows up).

    tools/vfio-harness --devices edu,virtio-rng --qemu-trace 'memory_region_ops_*' \\
        -- python3 -m pytest -p no:benchmark tests/kernel/test_memwidth_trace.py

(tools/run-kernel-tests runs it in its memwidth leg.)
"""

from __future__ import annotations

import os
import re
import struct
import time

import pytest

import vfio
from tests.kernel.kernel_harness import harness_bdfs

pytestmark = [pytest.mark.kernel, pytest.mark.qemu_trace]

VIRTIO_RNG_ID = (0x1AF4, 0x1044)
PCI_CAP_ID_VNDR = 0x09
VIRTIO_PCI_CAP_DEVICE_CFG = 4
EDU_DMA_SRC, EDU_DMA_DST, EDU_DMA_COUNT, EDU_DMA_CMD = 0x80, 0x88, 0x90, 0x98
SENTINEL_OFF = 0xF0                     # in the virtio device-config window

_LINE = re.compile(r"memory_region_ops_(read|write) cpu -?\d+ mr 0x[0-9a-f]+ addr 0x([0-9a-f]+) "
                   r"value 0x([0-9a-f]+) size (\d+)")


def _fail(msg: str):
    pytest.fail(msg + "; run with tools/vfio-harness --devices edu,virtio-rng --qemu-trace "
                "'memory_region_ops_*' (tools/run-kernel-tests leg memwidth)", pytrace=False)


def _bound_bdf(name: str) -> str:
    bdfs = harness_bdfs(name) or []
    for bdf in bdfs:
        drv = os.path.realpath(f"/sys/bus/pci/devices/{bdf}/driver")
        if os.path.basename(drv) == "vfio-pci":
            return bdf
    _fail(f"no {name} device bound to vfio-pci (harness found {bdfs or 'none'})")


def _bar_start(bdf: str, bar: int) -> int:
    with open(f"/sys/bus/pci/devices/{bdf}/resource") as f:
        start = int(f.read().splitlines()[bar].split()[0], 16)
    if not start:
        _fail(f"BAR{bar} of {bdf} has no address")
    return start


def _virtio_device_cfg(dev) -> tuple[int, int, int]:
    """(BAR, offset, length) of the virtio device-config window, from the
    vendor-specific capabilities (struct virtio_pci_cap); a bounded walk."""
    cfg = dev.config.read(0, 256)
    pos, seen = cfg[0x34] & 0xFC, 0
    while pos and seen < 48:
        cap_id, nxt = cfg[pos], cfg[pos + 1] & 0xFC
        if cap_id == PCI_CAP_ID_VNDR and cfg[pos + 3] == VIRTIO_PCI_CAP_DEVICE_CFG:
            bar = cfg[pos + 4]
            offset, length = struct.unpack_from("<II", cfg, pos + 8)
            return bar, offset, length
        pos, seen = nxt, seen + 1
    _fail(f"{dev.name}: no virtio device-config capability")


class Trace:
    """The part of QEMU's trace log that one access produced, on some address ranges."""

    def __init__(self, path: str, sentinel):
        self.path = path
        self.sentinel = sentinel        # (MappedRegion, offset, absolute address)
        self.count = 0

    def capture(self, fn, ranges: list[tuple[int, int]]) -> list[tuple[str, int, int, int]]:
        """Run ``fn()``, write a sentinel, and return the ``(op, addr, size, value)`` lines
        inside ``ranges`` (inclusive-exclusive absolute addresses) logged in between."""
        start = os.stat(self.path).st_size
        fn()
        self.count += 1
        bar, off, abs_addr = self.sentinel
        mark = 0x5E000000 | self.count
        bar.write32(off, mark)
        out = []
        deadline = time.monotonic() + 60
        pos, tail = start, b""
        with open(self.path, "rb") as f:
            while True:
                f.seek(pos)
                end = os.fstat(f.fileno()).st_size      # never read what reading itself appends
                chunk = f.read(end - pos)
                pos += len(chunk)
                lines = (tail + chunk).split(b"\n")
                tail = lines.pop()
                for raw in lines:
                    m = _LINE.search(raw.decode("ascii", "replace"))
                    if not m:
                        continue
                    op, addr, value, size = m.group(1), int(m.group(2), 16), int(m.group(3), 16), int(m.group(4))
                    if op == "write" and addr == abs_addr and value == mark and size == 4:
                        return out
                    if any(lo <= addr < hi for lo, hi in ranges):
                        out.append((op, addr, size, value))
                if time.monotonic() > deadline:
                    pytest.fail(f"sentinel write {mark:#x} at {abs_addr:#x} never reached {self.path} "
                                f"(read up to {pos:#x}); lines so far: {out}")
                time.sleep(0.05)


@pytest.fixture(scope="module")
def wire():
    path = os.environ.get("VFIO_HARNESS_QEMU_TRACE")
    if not path or not os.path.exists(path):
        _fail("VFIO_HARNESS_QEMU_TRACE is not set or missing: QEMU's memory trace is not on")
    edu_bdf, rng_bdf = _bound_bdf("edu"), _bound_bdf("virtio-rng")
    with vfio.open_pci_device(edu_bdf) as edu, vfio.open_pci_device(rng_bdf) as rng:
        ids = struct.unpack("<HH", rng.config.read(0, 4))
        assert ids == VIRTIO_RNG_ID, f"{rng_bdf} is {ids[0]:04x}:{ids[1]:04x}, not virtio-rng (modern)"
        vbar, voff, vlen = _virtio_device_cfg(rng)
        assert vlen >= 0x100, f"virtio device-config window of {vlen:#x} bytes"
        with edu.region(0).map() as e0, rng.region(vbar).map() as v:
            e_abs = _bar_start(edu_bdf, 0)
            v_abs = _bar_start(rng_bdf, vbar) + voff
            trace = Trace(path, (v, voff + SENTINEL_OFF, v_abs + SENTINEL_OFF))
            yield {"trace": trace, "edu": e0, "edu_abs": e_abs, "edu_range": (e_abs, e_abs + edu.region(0).size),
                   "virtio": v, "virtio_off": voff, "virtio_abs": v_abs,
                   "virtio_range": (v_abs, v_abs + vlen)}


def _on_virtio(wire, fn):
    lines = wire["trace"].capture(fn, [wire["virtio_range"]])
    return [(op, addr - wire["virtio_abs"], size, value) for op, addr, size, value in lines]


def _on_edu(wire, fn):
    lines = wire["trace"].capture(fn, [wire["edu_range"]])
    return [(op, addr - wire["edu_abs"], size, value) for op, addr, size, value in lines]


@pytest.mark.parametrize("width,off", [(1, 0x13), (2, 0x22), (4, 0x44)])
def test_each_read_is_one_access_of_its_width(wire, width, off):
    v, base = wire["virtio"], wire["virtio_off"]
    got = {}
    lines = _on_virtio(wire, lambda: got.setdefault("v", getattr(v, f"read{8 * width}")(base + off)))
    assert [(op, a, s) for op, a, s, _ in lines] == [("read", off, width)]
    ones = (1 << (8 * width)) - 1
    assert got["v"] == ones == lines[0][3] & ones      # no config: all-ones (QEMU logs the model's 32-bit -1)


@pytest.mark.parametrize("width,off,value", [(1, 0x15, 0xA5), (2, 0x26, 0xBEEF), (4, 0x48, 0x12345678)])
def test_each_write_is_one_access_of_its_width(wire, width, off, value):
    v, base = wire["virtio"], wire["virtio_off"]
    lines = _on_virtio(wire, lambda: getattr(v, f"write{8 * width}")(base + off, value))
    assert lines == [("write", off, width, value)]          # no read-modify-write, no split


def test_32_and_64_bit_accesses_reach_edu_whole(wire):
    e = wire["edu"]
    assert _on_edu(wire, lambda: e.write32(EDU_DMA_SRC, 0x00C0FFEE)) == [("write", EDU_DMA_SRC, 4, 0x00C0FFEE)]
    assert _on_edu(wire, lambda: e.write64(EDU_DMA_DST, 0x0123456789ABCDEF)) == \
        [("write", EDU_DMA_DST, 8, 0x0123456789ABCDEF)]
    assert [line[:3] for line in _on_edu(wire, lambda: e.read32(EDU_DMA_SRC))] == [("read", EDU_DMA_SRC, 4)]
    got = {}
    lines = _on_edu(wire, lambda: got.setdefault("v", e.read64(EDU_DMA_DST)))
    assert lines == [("read", EDU_DMA_DST, 8, 0x0123456789ABCDEF)] and got["v"] == 0x0123456789ABCDEF


def test_refused_accesses_reach_nothing(wire):
    e = wire["edu"]

    def refused():
        for bad in (lambda: e.write32(EDU_DMA_SRC, 2 ** 32 + 5), lambda: e.write64(EDU_DMA_DST, -1),
                    lambda: e.read32(EDU_DMA_SRC + 2), lambda: e.write16(EDU_DMA_SRC + 1, 1)):
            with pytest.raises(ValueError):
                bad()
    assert _on_edu(wire, refused) == []


def test_bulk_read_split_rising_then_words_then_falling(wire):
    """memory.runs(): 1-, 2-, 4-byte pieces up to 8-alignment, 8-byte words, 4-, 2-, 1-byte tail."""
    v, base = wire["virtio"], wire["virtio_off"]
    lines = _on_virtio(wire, lambda: v.read(base + 0x61, 7))
    assert [line[:3] for line in lines] == [("read", 0x61, 1), ("read", 0x62, 2), ("read", 0x64, 4)]
    lines = _on_virtio(wire, lambda: v.read(base + 0x64, 7))
    assert [line[:3] for line in lines] == [("read", 0x64, 4), ("read", 0x68, 2), ("read", 0x6A, 1)]
    e = wire["edu"]
    lines = _on_edu(wire, lambda: e.read(EDU_DMA_SRC, 0x20))
    assert [line[:3] for line in lines] == [("read", o, 8) for o in (0x80, 0x88, 0x90, 0x98)]
    lines = _on_edu(wire, lambda: e.read(EDU_DMA_SRC + 4, 0x10))
    assert [line[:3] for line in lines] == [("read", 0x84, 4), ("read", 0x88, 8), ("read", 0x90, 4)]


def test_bulk_write_split_and_values(wire):
    e = wire["edu"]
    data = struct.pack("<QQ", 0x1111222233334444, 0x5555666677778888)
    assert _on_edu(wire, lambda: e.write(EDU_DMA_SRC, data)) == \
        [("write", 0x80, 8, 0x1111222233334444), ("write", 0x88, 8, 0x5555666677778888)]
    v, base = wire["virtio"], wire["virtio_off"]
    assert _on_virtio(wire, lambda: v.write(base + 0x71, bytes([1, 2, 3, 4, 5, 6, 7]))) == \
        [("write", 0x71, 1, 0x01), ("write", 0x72, 2, 0x0302), ("write", 0x74, 4, 0x07060504)]
