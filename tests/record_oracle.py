"""Test oracle: a device's answers to a fixed set of VFIO calls.

:func:`answers` runs the same calls on any :class:`vfio.device.Device` -- one
the kernel serves or a replayed record file -- and returns what came back as
JSON-able data, so a replay can be compared with the kernel it stands for:
``tests/unit/test_record_shipped.py`` (the shipped captures against the
kernel's recorded answers in ``fixtures/records/*.answers.json``),
``tests/kernel/test_record_live.py`` (a fresh capture against the live device)
and ``tools/fuzz-records`` (the call set on mutated files).

Recording the kernel's answers for a device bound to vfio-pci (in a
``tools/vfio-harness`` guest, from the repository)::

    python3 -m tests.record_oracle 0000:00:04.0 -o fixtures/records/edu.answers.json

It lives in tests/, not in the package: it is a test's oracle, and some of its
calls (refused writes, BAR sizing, an INTx enable, reset) are not what a user
tool should do to a device.
"""

from __future__ import annotations

import argparse
import errno
import json
import sys

from vfio import uapi
from vfio.errors import VfioError
from vfio.irq import EventFd


def _try(fn):
    """Result of a backend call as JSON: hex bytes, an int, or {"errno": name}."""
    try:
        r = fn()
    except OSError as e:
        return {"errno": errno.errorcode.get(e.errno, str(e.errno))}
    if isinstance(r, (bytes, bytearray)):
        return bytes(r).hex()
    if r is None or isinstance(r, int):
        return r
    r.close()           # an mmap: only whether it worked matters
    return "mapped"


def answers(dev) -> dict:
    """Run the same calls on any Device (kernel or replay) and return what came back.

    Only calls without lasting side effects: info at several argsz, unknown
    indexes, config reads, refused writes and SET_IRQS, BAR sizing (restored),
    mmaps.  ``tests/unit/test_record_shipped.py`` compares a replay's answers
    with the kernel's, recorded by :func:`main` in the guest.
    """
    b = dev.backend
    info = dev.info
    out: dict = {"get_info": {a: _try(lambda a=a: b.get_info(a)) for a in (8, 16, 24, 256)}}
    out["region_info"] = {f"{i}@{a}": _try(lambda i=i, a=a: b.get_region_info(i, a))
                          for i in range(info.num_regions + 2) for a in (16, 32, 256)}
    out["irq_info"] = {str(i): _try(lambda i=i: b.get_irq_info(i)) for i in range(info.num_irqs + 2)}
    pread, pwrite, mm, irqs = {}, {}, {}, {}
    for i in range(info.num_regions):
        try:
            ri = dev.region_info(i)
        except VfioError:
            continue
        base = ri.offset
        pread[f"{i}:end"] = _try(lambda: b.pread(base + ri.size, 4))
        if ri.size and ri.mmappable:
            pg = min(ri.size, 4096)
            mm[f"{i}:0"] = _try(lambda: b.mmap(base, pg))
            mm[f"{i}:past"] = _try(lambda: b.mmap(base + ((ri.size + 4095) & ~4095), 4096))
        elif ri.size:
            mm[f"{i}:0"] = _try(lambda: b.mmap(base, 4096))
        if info.is_pci and i == uapi.VFIO_PCI_ROM_REGION_INDEX and ri.size:
            pwrite["rom"] = _try(lambda: b.pwrite(base, b"\0\0\0\0"))
        if info.is_pci and i == uapi.VFIO_PCI_CONFIG_REGION_INDEX:
            pread["config"] = _try(lambda: b.pread(base, ri.size))
            pread["config:straddle"] = _try(lambda: b.pread(base + ri.size - 2, 4))
            pwrite["config:vendor"] = [_try(lambda: b.pwrite(base, b"\xff\xff")), _try(lambda: b.pread(base, 2))]
            for bar in range(6):
                off = base + 0x10 + 4 * bar
                orig = b.pread(off, 4)
                pwrite[f"config:bar{bar}"] = [_try(lambda: b.pwrite(off, b"\xff\xff\xff\xff")),
                                              _try(lambda: b.pread(off, 4))]
                b.pwrite(off, orig)
    pread["past_last_region"] = _try(lambda: b.pread((info.num_regions + 1) << uapi.VFIO_PCI_OFFSET_SHIFT, 4))
    # SET_IRQS requests the kernel refuses, and one INTx enable/disable pair
    u = uapi
    cases = {
        "header_only_disable": (bytes(u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0))[:16]
                        + b"\0" * 4),
        "bad_index": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER, info.num_irqs, 0, 1),
        "two_data_types": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_DATA_BOOL
                                          | u.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 1, b"\1"),
        "two_actions": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_MASK
                                       | u.VFIO_IRQ_SET_ACTION_UNMASK, 0, 0, 1),
        "start_past_count": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 5, 1),
        "data_short": u.build_irq_set(u.VFIO_IRQ_SET_DATA_EVENTFD | u.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 1),
        "disable_intx_not_enabled": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0),
        "mask_msi": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_MASK, 1, 0, 1),
        "mask_intx_not_enabled": u.build_irq_set(u.VFIO_IRQ_SET_DATA_NONE | u.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1),
    }
    for name, buf in cases.items():
        irqs[name] = _try(lambda buf=buf: b.set_irqs(bytes(buf)))
    try:
        intx = dev.irq_info(uapi.VFIO_PCI_INTX_IRQ_INDEX) if info.is_pci else None
    except VfioError:
        intx = None
    if intx is not None and intx.count:
        with EventFd("answers") as e:
            trig = uapi.VFIO_IRQ_SET_DATA_EVENTFD | uapi.VFIO_IRQ_SET_ACTION_TRIGGER
            irqs["intx_enable"] = _try(lambda: b.set_irqs(bytes(uapi.build_irq_set(
                trig, 0, 0, 1, uapi.irq_set_data_eventfds([e.fd])))))
            irqs["msi_while_intx"] = _try(lambda: b.set_irqs(bytes(uapi.build_irq_set(
                trig, 1, 0, 1, uapi.irq_set_data_eventfds([e.fd])))))
            irqs["intx_mask"] = _try(lambda: b.set_irqs(bytes(uapi.build_irq_set(
                uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_MASK, 0, 0, 1))))
            irqs["intx_unmask"] = _try(lambda: b.set_irqs(bytes(uapi.build_irq_set(
                uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_UNMASK, 0, 0, 1))))
            irqs["intx_disable"] = _try(lambda: b.set_irqs(bytes(uapi.build_irq_set(
                uapi.VFIO_IRQ_SET_DATA_NONE | uapi.VFIO_IRQ_SET_ACTION_TRIGGER, 0, 0, 0))))
    out.update(pread=pread, pwrite=pwrite, mmap=mm, set_irqs=irqs)
    out["reset"] = _try(b.reset) if info.can_reset else None
    return out


def main(argv=None) -> int:
    """Write the answers of a device bound to vfio-pci to a JSON file."""
    ap = argparse.ArgumentParser(prog="python3 -m tests.record_oracle",
                                 description="Record a live device's answers to the oracle's call set.")
    ap.add_argument("bdf", help="PCI address of a device bound to vfio-pci")
    ap.add_argument("-o", "--output", required=True, help="JSON file to write")
    a = ap.parse_args(argv)
    import vfio
    try:
        with vfio.open_pci_device(a.bdf) as dev:
            data = answers(dev)
    except (OSError, ValueError) as e:
        print(f"record_oracle: {e}", file=sys.stderr)
        return 1
    with open(a.output, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
