"""Shared timing for the benchmarks: best-of-N wall time, the least noisy figure on a shared machine."""

from __future__ import annotations

import gc
import time


def best(fn, repeat: int) -> float:
    """The shortest of ``repeat`` runs of ``fn()``, in seconds."""
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)


def best_interleaved(fns, repeat: int, clock=time.perf_counter) -> list[float]:
    """The shortest of ``repeat`` runs of each of ``fns``, run in turn (a, b, a, b, ...)
    so that a burst of load from other processes on a shared machine hits every
    function alike and the ratios between them stay fair; in seconds, in order.
    The garbage collector is off while timing (as ``timeit`` does): when it runs
    depends on all allocations so far, not on the function being timed.
    ``clock=time.thread_time`` times the CPU the calling thread used instead of
    wall time: on a machine with more runnable processes than cores, the time
    spent waiting for a core no longer lands on whichever function was running."""
    t = [[] for _ in fns]
    was_on = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            for i, fn in enumerate(fns):
                t0 = clock()
                fn()
                t[i].append(clock() - t0)
    finally:
        if was_on:
            gc.enable()
    return [min(x) for x in t]
