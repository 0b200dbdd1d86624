"""Timing helper shared by the benchmark runners and the scripts in benchmarks/."""

from __future__ import annotations

import time
from typing import Callable


def best_seconds(run: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """The fastest of `repeats` timed calls of run() (after one untimed call when `warmup`)."""
    if warmup:
        run()
    best = float("inf")
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return best
