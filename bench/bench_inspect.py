"""Whole-process time of vfio-inspect against ``lspci -vvv`` on the same host.

What an admin waits for is the whole command, interpreter start-up and
imports included, so both are timed as processes, alternating, each run
``--repeat`` times; the report is the median of each and their ratio.  Three
vfio-inspect forms are timed:

* ``list``: ``vfio-inspect`` (interfaces, groups, devices, viability, in-use
  checks, names) -- what it answers is closest to ``lspci -nnk`` plus more;
* ``detail``: ``vfio-inspect BDF...`` for every device (config space and
  capabilities decoded for each), which is what ``lspci -vvv`` does;
* ``python``: ``python -c pass`` with the same interpreter, the floor any
  Python tool pays.

    python3 bench/bench_inspect.py [--repeat N] [--root DIR] [--json]

``--root`` times vfio-inspect on a captured tree (lspci still reads the live
host).  Exit status 0; 1 if lspci is missing or a command fails.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str], env: dict | None = None) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    dt = time.perf_counter() - t0
    if r.returncode not in (0, 3):          # vfio-inspect 3: shown, a part unreadable (e.g. not root)
        raise RuntimeError(f"{' '.join(cmd)} exited {r.returncode}: {r.stderr.strip()[:300]}")
    return dt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--root", default="/")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    lspci = shutil.which("lspci")
    if lspci is None:
        print("bench_inspect: lspci not found (apt-get install pciutils)", file=sys.stderr)
        return 1
    py = sys.executable                     # not a shim: the interpreter itself
    inspect = [py, "-m", "vfio.host.inspect", "--root", a.root]
    sysdev = os.path.join(a.root, "sys/bus/pci/devices")
    bdfs = sorted(os.listdir(sysdev))
    cmds = {
        "lspci -vvv": [lspci, "-vvv"],
        "vfio-inspect (list)": inspect,
        "vfio-inspect (detail, every device)": inspect + bdfs,
        "python -c pass": [py, "-c", "pass"],
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    # An installed package has its .pyc files; a work tree run with
    # PYTHONDONTWRITEBYTECODE would recompile every module on every run and
    # time the compiler.  Bytecode goes to a throw-away cache instead.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    with tempfile.TemporaryDirectory(prefix="bench-inspect-") as cache:
        env["PYTHONPYCACHEPREFIX"] = cache
        try:
            for c in cmds.values():             # warm the page cache and the .pyc files
                timed(c, env)
            for _ in range(a.repeat):
                for k, c in cmds.items():
                    times[k].append(timed(c, env))
        except RuntimeError as e:
            print(f"bench_inspect: {e}", file=sys.stderr)
            return 1
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med["lspci -vvv"]
    res = {"devices": len(bdfs), "repeat": a.repeat, "root": "live host" if a.root == "/" else "captured tree",
           "median_seconds": {k: round(v, 4) for k, v in med.items()},
           "ratio_vs_lspci": {k: round(v / base, 1) for k, v in med.items() if k != "lspci -vvv"}}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{len(bdfs)} PCI devices, {a.repeat} runs each, median wall time of the whole process:")
        for k, v in med.items():
            ratio = "" if k == "lspci -vvv" else f"   {v / base:6.1f} x lspci -vvv"
            print(f"  {k:<38} {v * 1000:8.1f} ms{ratio}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
