"""Reproducible zip archives: the same files give the same bytes.

Every archive the project ships (the Lambda bundle and layers, the Glue and
EMR job code, CodeBuild's source) is written here, so a rebuild of the same
commit uploads byte-identical objects: entries sorted by name, one fixed
timestamp, fixed permissions, no directory entries, no extra fields.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Mapping
from pathlib import Path

from pipelines.core.fileio import atomic_path

# Zip stores local times from 1980 on; any fixed value will do.
FIXED_DATE = (2020, 1, 1, 0, 0, 0)
_FILE_MODE = 0o644
_EXECUTABLE_MODE = 0o755


def write_zip(destination: Path, entries: Mapping[str, Path | bytes]) -> Path:
    """Write ``entries`` (archive name -> source file or bytes) to ``destination``.

    Shared libraries and files that are executable on disk keep an executable
    mode (Lambda and EMR unpack them as they are); everything else is 0644.
    """
    with atomic_path(destination) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for name in sorted(entries):
            source = entries[name]
            body = source if isinstance(source, bytes) else source.read_bytes()
            info = zipfile.ZipInfo(name, date_time=FIXED_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so the mode below is honoured
            info.external_attr = _mode(name, source) << 16
            archive.writestr(info, body, compresslevel=9)
    destination.chmod(0o644)
    return destination


def _mode(name: str, source: Path | bytes) -> int:
    if ".so" in Path(name).name:
        return _EXECUTABLE_MODE
    if isinstance(source, Path) and source.stat().st_mode & 0o111:
        return _EXECUTABLE_MODE
    return _FILE_MODE


def tree_entries(root: Path, prefix: str = "", skip: Iterable[str] = ()) -> dict[str, Path]:
    """Every file under ``root`` as ``{prefix + relative path: path}``, caches left out."""
    skipped = {"__pycache__", *skip}
    return {
        prefix + path.relative_to(root).as_posix(): path
        for path in sorted(root.rglob("*"))
        if path.is_file() and not skipped & set(path.relative_to(root).parts)
        and path.suffix != ".pyc"
    }


def unzipped_size(archive: Path) -> int:
    """Bytes the archive takes once unpacked (what Lambda's size limit counts)."""
    with zipfile.ZipFile(archive) as opened:
        return sum(info.file_size for info in opened.infolist())
