"""Cost of a guest config read through the passthrough model, as a ratio against a
direct read of the device's config region in the same run.

Three guest reads are timed against the baseline ``device.config.read32``:

* passed-through: Vendor/Device ID (virtual config space -> backing -> config region);
* mixed: Command/Status (Status.CapList emulated, the rest passed through);
* emulated: BAR0 (answered from the virtual copy, no device access).

By default the device is a replayed record file, so this runs anywhere; with
``--bdf`` it opens a real device bound to vfio-pci (e.g. edu in the harness guest:
``tools/vfio-harness -- python3 bench/bench_passthrough_config.py --bdf 0000:00:04.0``).

    python3 bench/bench_passthrough_config.py [--record records/edu.vfiorec] [--bdf BDF] [-n N] [--repeat R]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from vfio.pci import regs as R
from vfio.pci.passthrough import PassthroughDevice

HERE = os.path.dirname(os.path.abspath(__file__))


def best_of(cases: dict, n: int, repeat: int) -> dict:
    """Best per-call time in ns of each case over ``repeat`` rounds of ``n`` calls; the cases take
    turns within a round so that load from elsewhere on the machine hits them alike."""
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(repeat):
        for name, fn in cases.items():
            t0 = time.perf_counter_ns()
            for _ in range(n):
                fn()
            best[name] = min(best[name], (time.perf_counter_ns() - t0) / n)
    return best


def run(device, n: int, repeat: int) -> dict:
    pt = PassthroughDevice(device)
    try:
        direct = device.config.read32
        cases = {
            "direct config region read32 (baseline)": lambda: direct(R.VENDOR_ID),
            "model read32, passed through (IDs)": lambda: pt.config_read(R.VENDOR_ID, 4),
            "model read32, mixed (Command/Status)": lambda: pt.config_read(R.COMMAND, 4),
            "model read32, emulated (BAR0)": lambda: pt.config_read(R.BASE_ADDRESS_0, 4),
        }
        # same answer first: the comparison is only fair if both paths read the same thing
        if pt.config_read(R.VENDOR_ID, 4) != direct(R.VENDOR_ID):
            raise SystemExit("model and config region disagree on the IDs")
        return best_of(cases, n, repeat)
    finally:
        pt.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--record", default=os.path.join(HERE, "..", "records", "edu.vfiorec"))
    ap.add_argument("--bdf", help="a real device bound to vfio-pci instead of the record")
    ap.add_argument("-n", type=int, default=20000, help="reads per timing run")
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args(argv)
    if args.bdf:
        import vfio
        device, source = vfio.open_pci_device(args.bdf), args.bdf
    else:
        from vfio.record.replay import open_replay
        device, source = open_replay(args.record), os.path.basename(args.record)
    with device:
        times = run(device, args.n, args.repeat)
    base = times["direct config region read32 (baseline)"]
    print(f"config read cost on {source} (best of {args.repeat} x {args.n}):")
    for name, ns in times.items():
        print(f"  {name:42s} {ns / 1000:8.2f} us  {ns / base:6.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
