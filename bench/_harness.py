"""Shared measuring helpers for the benchmark modules."""

from __future__ import annotations

import os
import resource
import statistics
import threading
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


def tree_rss_mb(root: int) -> float:
    """Resident memory of process ``root`` and all its descendants now, MiB (Linux /proc).

    A sum of RSS counts pages shared between processes (libraries) once per
    process, so it overstates the total a little: the safe side for a memory limit.
    """
    children: dict[int, list[int]] = {}
    rss_pages: dict[int, int] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as stat:
                # The command name (2nd field) may hold spaces: split after its ")".
                fields = stat.read().rsplit(")", 1)[1].split()
        except OSError:  # the process ended while we looked
            continue
        pid = int(entry.name)
        children.setdefault(int(fields[1]), []).append(pid)  # fields[1]: ppid
        rss_pages[pid] = int(fields[21])  # field 24 of stat: rss in pages
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss_pages.get(pid, 0)
        todo += children.get(pid, [])
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


class TreeRssSampler:
    """Samples :func:`tree_rss_mb` of a process every ``interval`` s in a thread; ``peak_mb``.

    ``ru_maxrss`` of children is the largest single process, not the sum of those
    running at once, which is what a machine's memory must hold.
    """

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.pid, self.interval, self.peak_mb = pid, interval, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak_mb = max(self.peak_mb, tree_rss_mb(self.pid))

    def __enter__(self) -> TreeRssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()
