"""Local backup vault: content-addressed, incremental snapshots with retain-until locks.

One module per job, over a shared format:

- ``layout``: where things live under ``workspace.vault``, the errors, hashing and copying;
- ``manifest``: the snapshot format (``Entry``, ``Snapshot``), MAC'd with the records key;
  reading, writing, listing; the audit heads snapshots anchor (``audit_anchors``);
- ``snapshot``: ``create_snapshot`` (incremental, consistent under the workspace lock);
- ``verify``: ``verify_snapshots`` authenticates manifests, re-hashes every referenced object,
  cross-checks the audit trail;
- ``restore``: ``restore_snapshot`` into a new directory, all or nothing;
- ``pruning``: ``delete_snapshots`` and ``prune``, refused while locked, held or unauthenticated;
  ``adopt_legacy`` re-signs manifests of older versions;
- ``schedule``: how often ``run_if_due`` takes a snapshot.

The names below are re-exported so ``from pipelines.compliance import vault`` keeps working.
"""

from pipelines.compliance.vault.layout import (
    CHUNK,
    SnapshotLocked,
    VaultError,
    clean_tmp,
    is_transient_name,
    object_path,
)
from pipelines.compliance.vault.manifest import (
    MANIFEST_FORMAT,
    Entry,
    Snapshot,
    audit_anchors,
    list_snapshots,
    load_snapshot,
    new_snapshot_id,
    snapshot_ids,
)
from pipelines.compliance.vault.pruning import (
    PruneResult,
    adopt_legacy,
    delete_snapshots,
    prune,
)
from pipelines.compliance.vault.restore import RestoreResult, restore_snapshot
from pipelines.compliance.vault.schedule import (
    DEFAULT_EVERY_HOURS,
    Schedule,
    due,
    get_schedule,
    last_snapshot_time,
    parse_schedule,
    run_if_due,
    set_schedule,
)
from pipelines.compliance.vault.snapshot import BackupResult, create_snapshot
from pipelines.compliance.vault.verify import VerifyReport, verify_snapshots
from pipelines.core.fileio import sha256_file

__all__ = [
    "CHUNK",
    "DEFAULT_EVERY_HOURS",
    "MANIFEST_FORMAT",
    "BackupResult",
    "Entry",
    "PruneResult",
    "RestoreResult",
    "Schedule",
    "Snapshot",
    "SnapshotLocked",
    "VaultError",
    "VerifyReport",
    "adopt_legacy",
    "audit_anchors",
    "clean_tmp",
    "create_snapshot",
    "delete_snapshots",
    "due",
    "get_schedule",
    "is_transient_name",
    "last_snapshot_time",
    "list_snapshots",
    "load_snapshot",
    "new_snapshot_id",
    "object_path",
    "parse_schedule",
    "prune",
    "restore_snapshot",
    "run_if_due",
    "set_schedule",
    "sha256_file",
    "snapshot_ids",
    "verify_snapshots",
]
