"""Shared timing for the benchmarks: best-of-N wall time, the least noisy figure on a shared machine."""

from __future__ import annotations

import time


def best(fn, repeat: int) -> float:
    """The shortest of ``repeat`` runs of ``fn()``, in seconds."""
    t = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        t.append(time.perf_counter() - t0)
    return min(t)
