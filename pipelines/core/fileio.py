"""Write a small file so readers see the old content or the new, never half of it; hash a file.

``write_bytes_atomically`` is the one temp-file-then-rename writer; ``durable=True``
also fsyncs the file and its directory, for records that must survive a power
cut once the call returns (backup manifests). ``sha256_file`` is the one
streaming file hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

CHUNK = 1 << 20


def write_bytes_atomically(path: Path, body: bytes, durable: bool = False) -> None:
    """Write through a unique temp file in the same directory, then rename over ``path``.

    ``durable`` fsyncs the bytes before the rename and the directory after it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(body)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        _fsync_dir(path.parent)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
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
