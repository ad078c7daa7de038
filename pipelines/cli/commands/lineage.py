"""``fraudops lineage [MODEL_VERSION]``: where a model came from and where it went.

Prints a tree: model package -> pipeline execution -> steps and their code
hashes -> feature partitions per split window (SHA-256) -> curated partitions
-> ingestion runs; plus feature definition version, evaluation, approvals and
deployments. ``--json`` prints the full record instead.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from rich.console import Console
from rich.tree import Tree

from pipelines.cli.commands._common import UserError, add_workdir_argument, open_workspace


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "lineage",
        help="trace a model version to its code, training data partitions and approvals",
        description="Resolve a model version's pipeline execution, step code hashes, the "
        "feature and curated partitions it was trained on (SHA-256), the ingestion runs "
        "behind them, its evaluation, approvals and deployments.",
    )
    parser.add_argument("model_version", nargs="?", default=None,
                        help="version number or model package ARN (default: the deployed one)")
    parser.add_argument("--group", default=None, help="model package group, if several")
    parser.add_argument("--json", action="store_true", help="print the lineage as JSON")
    parser.add_argument("--files", action="store_true",
                        help="list every partition file with its hash (default: a summary)")
    add_workdir_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from pipelines.model.lineage import LineageError, resolve_lineage
    from pipelines.model.registry import RegistryError

    try:
        lineage = resolve_lineage(open_workspace(args), args.model_version, args.group)
    except (LineageError, RegistryError) as exc:
        raise UserError(str(exc)) from exc
    if args.json:
        print(json.dumps(lineage, indent=2, default=str))
    else:
        Console().print(lineage_tree(lineage, files=args.files))
    return 0


def _mark(ok: bool) -> str:
    return "[green]ok[/]" if ok else "[red]MISMATCH[/]"


def lineage_tree(lineage: dict[str, Any], files: bool = False) -> Tree:
    """A rich tree of the lineage record (``files``: every partition file and hash)."""
    package = lineage["model_package"]
    root = Tree(f"[bold]model {package['group']} v{package['version']}[/] "
                f"({package['status']}) {package['arn']}")
    execution = lineage["execution"]
    run = root.add(f"execution {execution['id']} of {execution['pipeline']}: "
                   f"{execution['status']}, started by {execution['started_by']} "
                   f"at {execution['start_time']}")
    for step in lineage["steps"]:
        cached = f", cache hit from {step['cache_hit_from']}" if step["cache_hit_from"] else ""
        node = run.add(f"{step['name']} ({step['type']}) {step['status']}{cached}")
        for code in step["code"]:
            for name, digest in code["files"].items():
                node.add(f"code {name} sha256 {digest[:16]}... {_mark(code['matches_path'])}")
    features = lineage["feature_table"]
    data = root.add(f"feature table {features['uri']}: "
                    + ("[green]verified unchanged since training[/]" if features["verified"]
                       else "[red]changed since training[/]"))
    for window, days in lineage["training_days"].items():
        split = lineage["split"].get(window, {})
        check = features["window_row_check"].get(window, {})
        node = data.add(f"{window}: {split.get('start')}..{split.get('end')}, "
                        f"{len(days)} partitions, rows {check.get('rows_now')} "
                        f"{_mark(check.get('match', False))}")
        if files:
            for partition in features["partitions"]:
                if partition["window"] == window:
                    for entry in partition["files"]:
                        node.add(f"dt={partition['dt']}/{entry['file']} sha256 {entry['sha256']}")
    curated = root.add(f"curated: {len(lineage['curated']['partitions'])} partitions")
    if files:
        for partition in lineage["curated"]["partitions"]:
            for entry in partition["files"]:
                curated.add(f"dt={partition['dt']}/{entry['file']} sha256 {entry['sha256']}")
    for ingest in lineage["curated"]["ingestion_runs"]:
        audited = f"audit seq {ingest['audit']['seq']}" if ingest["audit"] else "not audited"
        curated.add(f"ingestion {ingest['ingestion_id']}: {ingest['rows_curated']} rows from "
                    f"{len(ingest['sources'])} files, {ingest['finished_at']} ({audited})")
    definitions = lineage["feature_definitions"]
    root.add(f"feature definitions {definitions['trained_version']} "
             + ("(current)" if definitions["current_matches"]
                else f"[yellow](current is {definitions['current_version']})[/]"))
    evaluation = lineage["evaluation"]
    if evaluation.get("present"):
        metrics = ", ".join(f"{k} {v:.3f}" for k, v in evaluation["metrics"].items()
                            if isinstance(v, int | float))
        root.add(f"evaluation {metrics}; alert threshold {evaluation['alert_threshold']}")
    approvals = root.add(f"decisions ({len(lineage['approvals'])})")
    for decision in lineage["approvals"]:
        approvals.add(f"{decision['DecidedAt']} {decision['Approver']}: {decision['FromStatus']}"
                      f" -> {decision['ToStatus']} ({decision['Reason']})")
    deployments = root.add(f"deployments ({len(lineage['deployments'])})")
    for deployment in lineage["deployments"]:
        deployments.add(f"{deployment['finished_at']} {deployment['status']} "
                        f"{deployment['endpoint_url'] or ''} {deployment['message']}")
    return root
