"""Every notebook runs headless, top to bottom, in a fresh workspace."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shared_workspace(tmp_path_factory):
    """One workspace for all notebooks, in name order (the data scientist's comes first)."""
    return tmp_path_factory.mktemp("notebooks") / "ws"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path: Path, shared_workspace: Path, monkeypatch):
    monkeypatch.setenv("FRAUDOPS_HOME", str(shared_workspace))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(path.parent)}})
    client.execute(env=dict(os.environ))
    errors = [o for c in notebook.cells for o in c.get("outputs", [])
              if o.get("output_type") == "error"]
    assert not errors
