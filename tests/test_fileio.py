"""The one atomic writer: the target holds the old content or the new, never a part."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from pipelines.core.fileio import atomic_path, write_bytes_atomically


def test_a_block_that_succeeds_replaces_the_target(tmp_path: Path):
    target = tmp_path / "deep" / "bundle.zip"
    with atomic_path(target) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        assert tmp.parent == target.parent and tmp.name.startswith(".bundle.zip.")
        assert tmp.name.endswith(".tmp")
        archive.writestr("a.txt", "new")
        assert not target.exists()  # nothing visible until the block ends
    assert zipfile.ZipFile(target).read("a.txt") == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["bundle.zip"]


def test_a_block_that_fails_leaves_the_old_content_and_no_temp_file(tmp_path: Path):
    target = tmp_path / "scores.parquet"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="half way"), atomic_path(target) as tmp:
        tmp.write_bytes(b"new, but only h")
        raise RuntimeError("half way")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["scores.parquet"]


@pytest.mark.parametrize("durable", [False, True])
def test_small_files_go_through_the_same_writer(tmp_path: Path, durable: bool):
    target = tmp_path / "manifest.json"
    write_bytes_atomically(target, b"{}", durable=durable)
    write_bytes_atomically(target, b'{"v": 2}', durable=durable)
    assert target.read_bytes() == b'{"v": 2}'
    assert [p.name for p in tmp_path.iterdir()] == ["manifest.json"]
