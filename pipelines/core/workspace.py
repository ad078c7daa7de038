"""One workspace directory holds every piece of local state.

A user can see, back up or delete it, and two workspaces never interfere.
The object store is a directory tree: ``s3://bucket/key`` lives at
``<root>/s3/bucket/key``, so the same URIs work locally and on AWS.

The workspace holds card data, keys, the audit trail and backups, so it is the
owner's alone: opening one tightens the process umask to ``077`` (directories
0700, files 0600 whatever library writes them: DuckDB, SQLite, Arrow, the stdlib)
and the root directory to 0700, which also closes a workspace created before
this rule to other users without walking its tree.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

DEFAULT_DIRNAME = ".fraudops"
HOME_ENV = "FRAUDOPS_HOME"
OWNER_ONLY_UMASK = 0o077
OWNER_ONLY_DIR_MODE = 0o700

# Local bucket names; on AWS these are stack outputs.
LANDING_BUCKET = "landing"
LAKE_BUCKET = "lake"
ARTIFACTS_BUCKET = "artifacts"
RECORDS_BUCKET = "records"


def restrict_to_owner() -> None:
    """Make everything this process creates from now on owner-only (umask 077).

    Only adds bits to the umask: a stricter one the user set is kept. The umask
    is process-wide and inherited by child processes (the endpoint server, the
    pipeline's step processes), which write into the workspace too.
    """
    current = os.umask(OWNER_ONLY_UMASK)
    os.umask(current | OWNER_ONLY_UMASK)


def default_root() -> Path:
    """``$FRAUDOPS_HOME`` if set, else ``./.fraudops`` under the current directory."""
    env = os.environ.get(HOME_ENV)
    return Path(env) if env else Path.cwd() / DEFAULT_DIRNAME


@dataclass(frozen=True)
class Workspace:
    """Paths of every local zone, derived from one root directory."""

    root: Path

    @classmethod
    def open(cls, root: str | os.PathLike[str] | None = None) -> Workspace:
        """Resolve ``root`` (or the default), create it owner-only, and tighten the umask."""
        restrict_to_owner()
        path = Path(root).expanduser().resolve() if root else default_root().resolve()
        path.mkdir(parents=True, exist_ok=True, mode=OWNER_ONLY_DIR_MODE)
        if path.stat().st_uid == os.getuid():
            os.chmod(path, OWNER_ONLY_DIR_MODE)
        return cls(path)

    # --- object store -------------------------------------------------------
    @property
    def object_store(self) -> Path:
        return self.root / "s3"

    def local_path(self, uri: str) -> Path:
        """Map ``s3://bucket/key`` (or a plain path) to a local path."""
        parsed = urlparse(uri)
        if parsed.scheme == "s3":
            return self.object_store / parsed.netloc / parsed.path.lstrip("/")
        if parsed.scheme in ("", "file"):
            return Path(parsed.path if parsed.scheme == "file" else uri)
        raise ValueError(f"unsupported URI scheme in {uri!r}: use s3:// or a local path")

    def s3_uri(self, bucket: str, key: str = "") -> str:
        return f"s3://{bucket}/{key}".rstrip("/")

    # --- zones -----------------------------------------------------------------
    @property
    def landing(self) -> Path:
        """Raw drops as they arrive (may contain card numbers in clear)."""
        return self.object_store / LANDING_BUCKET / "transactions"

    @property
    def lake(self) -> Path:
        return self.object_store / LAKE_BUCKET

    @property
    def curated(self) -> Path:
        """Clean, typed, tokenised transactions, partitioned ``dt=YYYY-MM-DD``."""
        return self.lake / "curated" / "transactions"

    @property
    def quarantine(self) -> Path:
        """Rejected rows with reason, source file and line."""
        return self.lake / "quarantine" / "transactions"

    @property
    def features(self) -> Path:
        return self.lake / "features" / "transactions"

    @property
    def scored(self) -> Path:
        return self.lake / "scored" / "transactions"

    @property
    def labels(self) -> Path:
        """Labels that arrive later (chargebacks, investigator dispositions)."""
        return self.lake / "labels" / "transactions"

    @property
    def artifacts(self) -> Path:
        return self.object_store / ARTIFACTS_BUCKET

    @property
    def records(self) -> Path:
        """Regulatory reports and the audit trail (retention-protected)."""
        return self.object_store / RECORDS_BUCKET

    # --- embedded databases and local services -------------------------------
    @property
    def catalog_db(self) -> Path:
        return self.root / "catalog.duckdb"

    @property
    def registry_db(self) -> Path:
        return self.root / "registry.sqlite"

    @property
    def cases_db(self) -> Path:
        return self.root / "cases.sqlite"

    @property
    def state_dir(self) -> Path:
        """Ingestion ledgers, online feature state, stream checkpoints."""
        return self.root / "state"

    @property
    def executions(self) -> Path:
        """Local pipeline executions: per-step status, logs, outputs."""
        return self.root / "executions"

    @property
    def outbox(self) -> Path:
        """Notifications (alerts, failures) as JSON lines."""
        return self.root / "outbox"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def secrets(self) -> Path:
        """Generated local keys (0600); never committed, never logged."""
        return self.root / "secrets"

    @property
    def vault(self) -> Path:
        return self.root / "vault"
