"""The workspace's SQLite stores (registry, executions, cases, deployments) when damaged.

SQLite says only "file is not a database"; the user needs to know which file it is
and the way back, and the command line shows that as one line, not a traceback.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESTORE_FROM_SNAPSHOT = (
    "restore the workspace from a snapshot ('fraudops backup list', then "
    "'fraudops backup restore')"
)


class DamagedStoreError(RuntimeError):
    """A workspace database cannot be read; the message names it and the way back."""


@contextmanager
def opening(path: Path, what: str, way_back: str = RESTORE_FROM_SNAPSHOT) -> Iterator[None]:
    """Around a store's first use: a damaged file becomes a :class:`DamagedStoreError`."""
    try:
        yield
    except sqlite3.OperationalError:
        raise  # locked, read-only, out of space: the file itself is fine
    except sqlite3.DatabaseError as exc:  # not a database, malformed image
        raise DamagedStoreError(f"{what} {path} is unreadable ({exc}); {way_back}") from exc
