"""Where the feature table lives and how it is replaced without half-written states.

Engine-neutral (no DuckDB or Spark import), so the Spark job shipped to EMR can
use it too. Layout (docs/CONTRACTS.md "Feature table"):
``<features>/dt=YYYY-MM-DD/*.parquet`` (``dt`` is the hive partition directory)
and ``<features>/_feature_set.json``.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

from pipelines.core.fileio import write_text_atomically
from pipelines.data.features.definitions import FULL_LAYOUT, FeatureLayout, feature_set_manifest

MANIFEST_NAME = "_feature_set.json"


def parquet_files(directory: Path) -> list[Path]:
    """Every Parquet file below ``directory`` (hive partitions included), sorted."""
    if not directory.is_dir():
        return []
    return sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))


def staging_dir(target: Path) -> Path:
    """A fresh sibling directory to write into before the swap (same filesystem)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent / f".{target.name}.staging-{uuid.uuid4().hex[:12]}"


def write_manifest(
    directory: Path, label_delay_days: int, layout: FeatureLayout = FULL_LAYOUT
) -> Path:
    """Write ``_feature_set.json`` atomically into ``directory``."""
    path = directory / MANIFEST_NAME
    manifest = feature_set_manifest(label_delay_days, layout)
    write_text_atomically(path, json.dumps(manifest, indent=2) + "\n")
    return path


def publish(staging: Path, target: Path) -> None:
    """Replace ``target`` by the fully written ``staging`` directory.

    Two renames on one filesystem: readers see either the old table or the new
    one, never a mix; the old copy is removed only after the new one is in place.
    """
    retired = target.parent / f".{target.name}.retired-{uuid.uuid4().hex[:12]}"
    if target.exists():
        os.replace(target, retired)
    try:
        os.replace(staging, target)
    except OSError:
        if retired.exists():
            os.replace(retired, target)
        raise
    shutil.rmtree(retired, ignore_errors=True)


def discard(staging: Path) -> None:
    """Remove a staging directory left by a failed build."""
    shutil.rmtree(staging, ignore_errors=True)
