"""The deployable artifacts: each one's size, and each Lambda function's against its limit.

Builds what ``fraudops infra build`` builds, with the layers made from this
interpreter's installed packages (no network; the manylinux wheels pip fetches
for Lambda are the same releases and within a few MB). ``--size`` is ignored.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench._harness import Result
from pipelines.workflow.artifacts import (
    LAMBDA_UNZIPPED_LIMIT,
    MANIFEST,
    InstalledSource,
    build_artifacts,
)

AREA = "artifacts"


def run(size: int, workdir: Path) -> list[Result]:
    shutil.rmtree(workdir, ignore_errors=True)
    built = build_artifacts(workdir, InstalledSource())
    manifest = json.loads(built[MANIFEST].read_text())
    results = [Result(AREA, key, entry["bytes"] / 1e6, "MB")
               for key, entry in sorted(manifest["artifacts"].items())]
    limit = LAMBDA_UNZIPPED_LIMIT / 1e6
    for function in manifest["functions"]:
        value = function["unzipped_bytes"] / 1e6
        results.append(Result(AREA, f"{function['handler']} + layers, unpacked", value, "MB",
                              f"<= {limit:.1f} MB (Lambda)", value <= limit))
    return results
