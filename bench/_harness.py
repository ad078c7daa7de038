"""Shared measuring helpers for the benchmark modules."""

from __future__ import annotations

import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Result:
    """One measured figure and, where the issue sets one, its target."""

    area: str
    name: str
    value: float
    unit: str
    target: str = ""
    ok: bool | None = None


def median_seconds(fn: Callable[[], object], repeat: int = 3) -> float:
    """Median wall time of ``repeat`` calls (these machines are noisy)."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its waited-for children, MiB."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024
