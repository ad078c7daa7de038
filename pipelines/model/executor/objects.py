"""Moving data between the local object store and a step's container paths.

Inputs are copied (``shutil.copyfile``: an in-kernel copy on Linux), not
linked: as in a real container, a script may modify or delete its inputs
without touching the object store. Outputs are copied file by file through
a temp name and ``os.replace`` so a reader never sees a half-written object.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile
from pathlib import Path
from typing import Any

from pipelines.core.fileio import CHUNK, atomic_path, sha256_file
from pipelines.core.workspace import Workspace


def iter_files(root: Path) -> list[Path]:
    """Files under ``root`` (or ``root`` itself if it is a file), sorted for stable hashes."""
    if root.is_file():
        return [root]
    return sorted(p for p in root.rglob("*") if p.is_file())


def hash_tree(root: Path) -> str:
    """Content hash of a file or directory tree (names and bytes); 'missing' if absent."""
    if not root.exists():
        return "missing"
    digest = hashlib.sha256()
    for path in iter_files(root):
        relative = path.name if path == root else path.relative_to(root).as_posix()
        digest.update(relative.encode() + b"\0" + sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


def stage_input(workspace: Workspace, uri: str, destination: Path) -> int:
    """Make the object(s) at ``uri`` appear under ``destination``; returns the file count.

    Like SageMaker's S3Prefix File mode: a prefix that is one object lands as
    ``destination/<name>``, a folder-like prefix is mirrored below ``destination``.
    Raises ``FileNotFoundError`` when nothing exists at ``uri``.
    """
    source = workspace.local_path(uri)
    destination.mkdir(parents=True, exist_ok=True)
    if source.is_file():
        _copy_input(source, destination / source.name)
        return 1
    if not source.is_dir():
        raise FileNotFoundError(f"no objects at {uri} (local path {source})")
    count = 0
    for path in iter_files(source):
        target = destination / path.relative_to(source)
        target.parent.mkdir(parents=True, exist_ok=True)
        _copy_input(path, target)
        count += 1
    return count


def upload_directory(workspace: Workspace, local_dir: Path, uri: str) -> dict[str, str]:
    """Copy every file of ``local_dir`` to ``uri``/...; returns ``{relative path: sha256}``.

    Keys already under ``uri`` that the step did not write are left alone, as
    S3 would; each written object is replaced atomically.
    """
    destination = workspace.local_path(uri)
    written: dict[str, str] = {}
    for path in iter_files(local_dir) if local_dir.is_dir() else []:
        relative = path.relative_to(local_dir).as_posix()
        written[relative] = copy_atomic(path, destination / relative)
    return written


def copy_atomic(source: Path, target: Path) -> str:
    """Copy ``source`` to ``target`` via a temp file + rename; returns the sha256."""
    digest = hashlib.sha256()
    with atomic_path(target) as tmp, source.open("rb") as src, tmp.open("wb") as dst:
        while chunk := src.read(CHUNK):
            digest.update(chunk)
            dst.write(chunk)
    return digest.hexdigest()


def write_tarball_atomic(source_dir: Path, target: Path) -> str:
    """``tar -czf target -C source_dir .`` written through a temp file; returns its sha256."""
    with atomic_path(target) as tmp:
        # compresslevel 6 is gzip's default: model files compress well and level 9 is slow.
        with tarfile.open(tmp, "w:gz", compresslevel=6) as tar:
            for path in iter_files(source_dir):
                tar.add(path, arcname=path.relative_to(source_dir).as_posix())
        return sha256_file(tmp)


def extract_tarball(archive: Path, destination: Path) -> None:
    """Extract a source/model tarball, refusing members that escape ``destination``."""
    destination.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:*") as tar:
        tar.extractall(destination, filter="data")


def read_json_object(workspace: Workspace, uri: str) -> Any:
    """Parse the JSON document at ``uri`` in the local object store."""
    path = workspace.local_path(uri)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise FileNotFoundError(f"JSON document {uri} does not exist (local path {path})") from exc


def outputs_intact(workspace: Workspace, recorded: dict[str, dict[str, str]]) -> bool:
    """True if every object a step wrote still has the content it wrote.

    A cache hit reuses a previous run's outputs, so they must not have been
    overwritten since (for example by a run with other parameters).
    """
    for uri, files in recorded.items():
        base = workspace.local_path(uri)
        for relative, digest in files.items():
            path = base / relative if relative else base
            if not path.is_file() or sha256_file(path) != digest:
                return False
    return True


def _copy_input(source: Path, target: Path) -> None:
    if target.exists():
        target.unlink()
    shutil.copyfile(source, target)
