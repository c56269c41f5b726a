"""The timing rule the micro-benchmarks share: one warm-up call, then the median of ``repeats`` calls."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any


def median_time(fn: Callable[[], Any], repeats: int) -> float:
    """Seconds per call of ``fn``: the median of ``repeats`` timed calls after one untimed one (allocations,
    oneDNN's kernel choice); the median, because this machine is shared and a call can be preempted."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
