"""Write a file so readers see the old content or the new, never half of it; hash a file.

``atomic_path`` is the one temp-file-then-rename writer: it hands out a temp
path beside the target for any library to write (Parquet, zip, tar, a copy)
and renames it over the target only if the block succeeds.
``write_bytes_atomically`` and friends are its small-file shorthands.
``durable=True`` also fsyncs the file and its directory, for records that must
survive a power cut once the call returns (backup manifests). ``sha256_file``
is the one streaming file hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


@contextmanager
def atomic_path(path: Path, durable: bool = False) -> Iterator[Path]:
    """A unique temp file beside ``path`` to write; renamed over ``path`` when the block ends.

    If the block raises, the temp file is removed and ``path`` is untouched. The
    temp name starts with a dot and ends in ``.tmp``, so listings and backups
    skip it. Like every ``mkstemp`` file, the result is readable by its owner only.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if durable:
            _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def write_bytes_atomically(path: Path, body: bytes, durable: bool = False) -> None:
    """``body`` written to ``path`` through ``atomic_path``."""
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(body)


def fsync_dir(directory: Path) -> None:
    """Make a rename or a new file in ``directory`` survive a power cut."""
    _fsync(directory)


def _fsync(path: Path) -> None:
    """Flush ``path``'s data (a file's bytes, a directory's entries) to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_text_atomically(path: Path, text: str) -> None:
    write_bytes_atomically(path, text.encode("utf-8"))


def write_json_atomically(path: Path, value: Any, **dumps_options: Any) -> None:
    """``json.dumps(value, **dumps_options)`` written atomically."""
    write_text_atomically(path, json.dumps(value, **dumps_options))


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
