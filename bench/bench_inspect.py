"""Whole-process time of vfio-inspect against ``lspci -vvv`` on the same host.

What an admin waits for is the whole command, interpreter start-up and
imports included, so every command is timed as a process, all of them in
turn (so load from other processes hits each alike), each ``--repeat`` times;
the report is the median of each and its ratio to ``lspci -vvv``.  Timed:

* ``lspci -vvv``, and ``lspci -nvvv`` (the same without names: the
  difference is what lspci's names cost it -- it hashes all of pci.ids);
* ``python -c pass`` with the same interpreter: the floor any Python tool
  pays (start-up, ``site`` and whatever ``.pth`` files the installation has);
* ``vfio-inspect``, the listing (interfaces, groups, devices, viability,
  in-use checks, names) -- closest to ``lspci -nnk`` plus more;
* ``vfio-inspect BDF`` for the first device (config space and capabilities
  decoded, names, subsystem), and for every device, which is what
  ``lspci -vvv`` does.

For each vfio-inspect form two ratios are printed: whole process against
lspci, and its *own work* (whole process minus ``python -c pass``) against
lspci.  Then, in this process, the PCI ID name lookups alone
(:class:`vfio.pci.ids.PciIds` from a fresh read of pci.ids: vendor, device and
class name of every device) against lspci's name cost.

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

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def timed(cmd: list[str], env: dict | None = None) -> tuple[float, float]:
    """(wall time, CPU time user+system) of one run of ``cmd``."""
    with tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=err, env=env)
        _, status, ru = os.wait4(p.pid, 0)
        dt = time.perf_counter() - t0
        p.returncode = os.waitstatus_to_exitcode(status)
        if p.returncode not in (0, 3):      # vfio-inspect 3: shown, a part unreadable (e.g. not root)
            err.seek(0)
            raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {err.read().decode()[:300]}")
    return dt, ru.ru_utime + ru.ru_stime


def names_lookup(sysdev: str, repeat: int, cache_dir: str | None = None) -> tuple[float, int]:
    """Best time of a fresh PciIds (pci.ids read again) answering vendor, device and
    class names for every device under ``sysdev``; and how many devices.  With
    ``cache_dir``, through the answer cache there (warmed first), as
    ``PciIds.default()`` answers in vfio-inspect."""
    from vfio.pci.ids import DEFAULT_PATHS, PciIds
    path = next((p for p in DEFAULT_PATHS if os.path.exists(p)), None)
    ids = []
    for bdf in sorted(os.listdir(sysdev)):
        def rd(f):
            with open(os.path.join(sysdev, bdf, f)) as fh:
                return int(fh.read(), 16)
        ids.append((rd("vendor"), rd("device"), rd("class")))
    if cache_dir is not None:
        warm = PciIds(path, cache_dir=cache_dir)
        for v, d, c in ids:
            warm.vendor_name(v), warm.device_name(v, d), warm.class_name(c)
        warm._cache.save()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        db = PciIds(path, cache_dir=cache_dir)
        for v, d, c in ids:
            db.vendor_name(v), db.device_name(v, d), db.class_name(c)
        best = min(best, time.perf_counter() - t0)
    return best, len(ids)


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
    floor = "python -c pass"
    cmds = {
        "lspci -vvv": [lspci, "-vvv"],
        "lspci -nvvv (no names)": [lspci, "-nvvv"],
        floor: [py, "-c", "pass"],
        "vfio-inspect (list)": inspect if a.root != "/" else [py, "-m", "vfio.host.inspect"],
        f"vfio-inspect {bdfs[0]}": inspect + bdfs[:1],
        "vfio-inspect BDF... (every device)": inspect + bdfs,
    }
    times: dict[str, list[float]] = {k: [] for k in cmds}
    cpus: dict[str, list[float]] = {k: [] for k in cmds}
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
                    wall, cpu = timed(c, env)
                    times[k].append(wall)
                    cpus[k].append(cpu)
        except RuntimeError as e:
            print(f"bench_inspect: {e}", file=sys.stderr)
            return 1
    med = {k: statistics.median(v) for k, v in times.items()}
    cpu = {k: statistics.median(v) for k, v in cpus.items()}
    base = med["lspci -vvv"]
    own = {k: med[k] - med[floor] for k in med if k.startswith("vfio-inspect")}
    t_names, ndev = names_lookup(sysdev, max(5, a.repeat))
    with tempfile.TemporaryDirectory(prefix="bench-inspect-ids-") as d:
        t_cached, _ = names_lookup(sysdev, max(5, a.repeat), d)
    lspci_names = med["lspci -vvv"] - med["lspci -nvvv (no names)"]
    res = {"devices": len(bdfs), "repeat": a.repeat, "root": "live host" if a.root == "/" else "captured tree",
           "median_seconds": {k: round(v, 4) for k, v in med.items()},
           "ratio_vs_lspci": {k: round(v / base, 2) for k, v in med.items() if k != "lspci -vvv"},
           "own_work_seconds": {k: round(v, 4) for k, v in own.items()},
           "own_work_ratio_vs_lspci": {k: round(v / base, 2) for k, v in own.items()},
           "median_cpu_seconds": {k: round(v, 4) for k, v in cpu.items()},
           "names_lookup_seconds": round(t_names, 5), "names_lookup_cached_seconds": round(t_cached, 5), "lspci_names_seconds": round(lspci_names, 5)}
    if a.json:
        print(json.dumps(res, indent=1))
    else:
        print(f"{len(bdfs)} PCI devices, {a.repeat} runs each, median wall time of the whole process "
              f"(baseline: lspci -vvv):")
        for k, v in med.items():
            ratio = "" if k == "lspci -vvv" else f"   {v / base:5.2f}x lspci -vvv"
            if k in own:
                ratio += f"   own work (minus {floor}) {own[k] * 1000:6.1f} ms = {own[k] / base:5.2f}x lspci -vvv"
            print(f"  {k:<36} {v * 1000:7.1f} ms{ratio}")
        own_cpu = {k: cpu[k] - cpu[floor] for k in own}
        print("median CPU time (user+system; what load from other processes changes least): "
              + ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in cpu.items()))
        print("own work in CPU time against lspci -vvv's: "
              + ", ".join(f"{k} {v / cpu['lspci -vvv']:.2f}x" for k, v in own_cpu.items()))
        print(f"PCI ID names, {ndev} devices (vendor, device, class), pci.ids read afresh: searched "
              f"{t_names * 1000:.2f} ms, from the answer cache {t_cached * 1000:.2f} ms (vfio.pci.ids); "
              f"lspci's names cost (lspci -vvv minus lspci -nvvv): {lspci_names * 1000:.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
