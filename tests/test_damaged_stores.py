"""A damaged workspace database: one line naming the file and the way back, never a traceback.

A torn copy, a full disk or a bad restore leaves a file SQLite or DuckDB cannot
open. The user must learn which file it is and what to do, and nothing else
may be touched.
"""

from __future__ import annotations

import pytest

from pipelines.cli.main import main
from pipelines.core.stores import DamagedStoreError
from pipelines.model.deployments import DeploymentHistory


def _damage(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not a database, it is a torn copy")


@pytest.mark.parametrize(
    ("store", "command", "names", "way_back"),
    [
        (lambda ws: ws.registry_db, ["model", "list"], "model registry", "fraudops backup restore"),
        (lambda ws: ws.executions / "executions.sqlite", ["pipeline", "list"], "execution store",
         "move it aside to start a new history"),
        (lambda ws: ws.cases_db, ["alerts", "list"], "case queue", "fraudops backup restore"),
        (lambda ws: ws.catalog_db, ["query", "SELECT 1"], "catalog",
         "it can be rebuilt: move it aside"),
    ],
    ids=["registry", "executions", "cases", "catalog"],
)
def test_a_damaged_store_is_named_with_the_way_back(workspace, capsys, store, command, names,
                                                     way_back):
    path = store(workspace)
    _damage(path)
    before = path.read_bytes()
    code = main([*command, "--workdir", str(workspace.root)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"{names} {path} is unreadable" in err and way_back in err
    assert "Traceback" not in err
    assert path.read_bytes() == before  # nothing written over it


def test_the_deployment_history_names_the_damaged_registry(workspace):
    _damage(workspace.registry_db)
    with pytest.raises(DamagedStoreError, match="model registry .*registry.sqlite is unreadable"):
        DeploymentHistory(workspace.registry_db)


def test_a_damaged_token_key_is_named_and_not_replaced(workspace, tmp_path, capsys):
    key = workspace.secrets / "card_token.key"
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("garbage\n")
    key.chmod(0o600)
    drop = tmp_path / "tx.csv"
    drop.write_text("transaction_id,timestamp,amount\nt1,2026-01-01T00:00:00Z,1.00\n")
    code = main(["ingest", str(drop), "--workdir", str(workspace.root)])
    err = capsys.readouterr().err
    assert code == 2
    assert f"token key file {key} holds 7 bytes, too short" in err
    assert "restore it from a snapshot" in err and "new key cannot reproduce" in err
    assert key.read_text() == "garbage\n"  # never silently replaced: tokens would change
