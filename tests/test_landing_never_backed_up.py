"""The landing zone is never backed up (issue 11, item 6).

Raw drops may carry card numbers in clear; a backup would keep them for years in a
compliance-locked vault (and a second region) where nobody can delete them. On AWS
the landing bucket carries no tag a backup selection matches and every selection
excludes it by ARN; locally the vault holds no landing file and no raw bytes of one.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from test_infra import INFRA, _load

from pipelines.compliance.vault import create_snapshot
from pipelines.core.workspace import Workspace
from pipelines.data.ingest import ingest

CLEAR_PANS = ("4111111111111111", "5555555555554444")


def _sub(value: Any) -> str:
    """The text of a ``!Sub`` (or a plain string)."""
    return value["Fn::Sub"] if isinstance(value, dict) else value


def _landing_bucket() -> dict[str, Any]:
    resources = _load(INFRA / "storage.yaml")["Resources"]
    return resources["LandingBucket"]["Properties"]


def _tag_conditions(templates: list[Path]) -> list[tuple[str, str]]:
    """(tag key, value) every backup and restore-testing selection matches on."""
    found = []
    for path in templates:
        for resource in _load(path)["Resources"].values():
            props = resource.get("Properties", {})
            if resource["Type"] == "AWS::Backup::BackupSelection":
                selection = props["BackupSelection"]
                found += [(t["ConditionKey"], json.dumps(t["ConditionValue"]))
                          for t in selection.get("ListOfTags", [])]
            if resource["Type"] == "AWS::Backup::RestoreTestingSelection":
                for conditions in props.get("ProtectedResourceConditions", {}).values():
                    found += [(c["Key"].removeprefix("aws:ResourceTag/"), json.dumps(c["Value"]))
                              for c in conditions]
    return found


def test_the_landing_bucket_carries_no_tag_a_backup_selection_matches():
    templates = sorted(INFRA.glob("*.yaml"))
    conditions = _tag_conditions(templates)
    assert conditions, "expected tag-based selections in infra/backup.yaml"
    tags = {(t["Key"], json.dumps(t["Value"])) for t in _landing_bucket().get("Tags", [])}
    assert not tags & set(conditions)
    assert not {key for key, _ in tags} & {key for key, _ in conditions}


def test_every_backup_selection_excludes_the_landing_bucket_by_arn():
    landing_name = _sub(_landing_bucket()["BucketName"])
    assert "landing" in landing_name
    selections = [
        (path.name, resource["Properties"]["BackupSelection"])
        for path in sorted(INFRA.glob("*.yaml"))
        for resource in _load(path)["Resources"].values()
        if resource["Type"] == "AWS::Backup::BackupSelection"
    ]
    assert selections
    for name, selection in selections:
        excluded = [_sub(arn) for arn in selection.get("NotResources", [])]
        assert f"arn:${{AWS::Partition}}:s3:::{landing_name}" in excluded, name
        included = [_sub(arn) for arn in selection.get("Resources", [])]
        assert not any("landing" in arn or arn.endswith("*") for arn in included), name


def _object_files(ws: Workspace) -> list[Path]:
    return [p for p in ws.vault.rglob("*") if p.is_file()]


def test_the_local_vault_holds_no_raw_drop(workspace: Workspace):
    drop = workspace.landing / "2026-03-03" / "drop.csv"
    drop.parent.mkdir(parents=True)
    drop.write_text(
        "transaction_id,timestamp,customer_id,terminal_id,amount,card_number,is_fraud\n"
        f"t1,2026-03-03T09:00:00Z,C1,T1,10.00,{CLEAR_PANS[0]},0\n"
        f"t2,2026-03-03T10:00:00Z,C2,T2,20.00,{CLEAR_PANS[1]},1\n")
    raw = drop.read_bytes()
    ingest(workspace)  # the default source: the landing zone
    result = create_snapshot(workspace)

    entries = result.snapshot.entries
    assert {e.zone for e in entries} >= {"curated", "catalog_db"}
    assert not any("landing" in e.zone for e in entries)
    digest = hashlib.sha256(raw).hexdigest()
    assert digest not in {e.sha256 for e in entries}
    objects = _object_files(workspace)
    assert not any(digest in p.name for p in objects)
    for path in objects:
        data = path.read_bytes()
        assert data != raw, path
        assert not any(pan.encode() in data for pan in CLEAR_PANS), path
