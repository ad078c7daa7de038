"""Where ingestion reads and writes, on any ``pyarrow.fs`` filesystem.

Locally every path is under the workspace; in the Glue job the same layout
points at S3 prefixes. Staging lives beside the lake (same bucket, same
filesystem) so publishing a staged file is a rename, not a copy.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pyarrow.fs as pafs

from pipelines.core.workspace import Workspace


@dataclass(frozen=True)
class LakeLayout:
    """Paths (in ``fs`` terms: local paths or ``bucket/key``) of every ingestion zone."""

    fs: pafs.FileSystem
    curated: str
    quarantine: str
    staging: str
    state: str
    logs: str
    scheme: str = ""  # "s3://" for S3 so messages and source_file show full URIs

    @classmethod
    def for_workspace(cls, ws: Workspace) -> LakeLayout:
        return cls(
            fs=pafs.LocalFileSystem(),
            curated=str(ws.curated),
            quarantine=str(ws.quarantine),
            # A dot name: never backed up, never matched by a zone's glob.
            staging=str(ws.lake / ".staging" / "ingest"),
            state=str(ws.state_dir / "ingest"),
            logs=str(ws.logs / "ingest"),
        )

    @classmethod
    def for_s3(cls, fs: pafs.FileSystem, lake: str, state: str, logs: str) -> LakeLayout:
        """Layout under ``s3://`` prefixes given as ``bucket/key`` (no scheme)."""
        lake = lake.rstrip("/")
        return cls(
            fs=fs,
            curated=f"{lake}/curated/transactions",
            quarantine=f"{lake}/quarantine/transactions",
            staging=f"{lake}/.staging/ingest",
            state=state.rstrip("/"),
            logs=logs.rstrip("/"),
            scheme="s3://",
        )

    def display(self, path: str) -> str:
        return f"{self.scheme}{path}"

    def exists(self, path: str) -> bool:
        return self.fs.get_file_info(path).type != pafs.FileType.NotFound

    def write_json(self, path: str, payload: object) -> None:
        """Write JSON atomically: a temporary sibling, then a rename."""
        parent = path.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        temporary = f"{parent}/_tmp-{uuid.uuid4().hex}.json"
        with self.fs.open_output_stream(temporary) as out:
            out.write(json.dumps(payload, indent=2, sort_keys=True, default=str).encode())
        self.fs.move(temporary, path)

    def read_json(self, path: str) -> dict:
        with self.fs.open_input_stream(path) as stream:
            return json.loads(stream.read())
