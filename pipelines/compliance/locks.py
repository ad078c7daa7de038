"""File locks shared between processes: the workspace lock and small per-file locks.

The workspace lock (``<root>/.lock``) lets a backup see the lake in a
consistent state. Writers (ingest, feature job, scoring) already write each
partition to a staging directory and ``os.replace`` it into place; they hold
``workspace_lock(ws, exclusive=False)`` while they do, so several writers run
side by side. A backup holds it exclusively, so no writer is half-way through
while the snapshot is taken.

Locks are ``fcntl.flock`` locks: the kernel releases them when the holding
process dies (even on SIGKILL), so a crash never leaves a stale lock behind.
Nested acquisition of the same lock in the same thread is re-entrant.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from pipelines.core.workspace import Workspace

WORKSPACE_LOCK_NAME = ".lock"
_POLL_SECONDS = 0.05

# Locks this thread already holds: path -> (exclusive, depth). flock locks
# belong to an open file description, so a second open() of the same file in
# this process would block on our own lock; re-entrancy avoids that.
_held = threading.local()


class LockTimeout(TimeoutError):
    """The lock stayed busy for longer than the caller was willing to wait."""


def _held_locks() -> dict[str, list]:
    if not hasattr(_held, "locks"):
        _held.locks = {}
    return _held.locks


@contextmanager
def file_lock(
    path: Path, *, exclusive: bool = True, timeout: float | None = None, purpose: str = ""
) -> Iterator[None]:
    """Hold an ``flock`` on ``path`` (created if absent) for the ``with`` block.

    ``timeout`` None waits forever; otherwise ``LockTimeout`` is raised after
    ``timeout`` seconds with a message naming the lock file and ``purpose``.
    """
    key = str(Path(path).resolve())
    held = _held_locks()
    if key in held:
        held_exclusive, depth = held[key]
        if exclusive and not held_exclusive:
            raise RuntimeError(
                f"{path}: this thread holds a shared lock and asked for an exclusive one; "
                "release the shared lock first (flock upgrades are not atomic)"
            )
        held[key] = [held_exclusive, depth + 1]
        try:
            yield
        finally:
            held[key][1] -= 1
        return

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        _acquire(fd, path, exclusive, timeout, purpose)
        held[key] = [exclusive, 1]
        try:
            yield
        finally:
            del held[key]
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _acquire(fd: int, path: Path, exclusive: bool, timeout: float | None, purpose: str) -> None:
    mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
    if timeout is None:
        fcntl.flock(fd, mode)
        return
    deadline = time.monotonic() + timeout
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                what = f" for {purpose}" if purpose else ""
                raise LockTimeout(
                    f"could not lock {path}{what} within {timeout:g}s: another fraudops "
                    "process is using it; wait for it to finish and retry"
                ) from None
            time.sleep(_POLL_SECONDS)


@contextmanager
def workspace_lock(
    ws: Workspace, exclusive: bool = True, timeout: float | None = None
) -> Iterator[None]:
    """Hold the workspace lock: exclusive for a backup, shared for partition writers.

    Writers adopt it as ``with workspace_lock(ws, exclusive=False): write staging; os.replace``.
    """
    with file_lock(
        ws.root / WORKSPACE_LOCK_NAME,
        exclusive=exclusive,
        timeout=timeout,
        purpose="a backup" if exclusive else "writing the lake",
    ):
        yield
