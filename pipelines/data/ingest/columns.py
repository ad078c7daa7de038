"""Mapping a user's own column names onto the canonical schema.

A column map is a JSON object ``{"their_column": "canonical_column"}``. Columns
already named canonically need no entry; headers that differ from a canonical
name only by case or surrounding spaces are matched too. Columns that map to
nothing are ignored (never stored), except sensitive authentication data,
which refuses the whole file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from pipelines.core import schema
from pipelines.data.ingest.errors import IngestError

_NON_ALNUM = re.compile(r"[^a-z0-9]+")


def load_column_map(path: str | Path) -> dict[str, str]:
    """Read and check a column-map JSON file; raise ``IngestError`` naming the problem."""
    file = Path(path)
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise IngestError(f"column map {file} does not exist") from exc
    except json.JSONDecodeError as exc:
        raise IngestError(
            f"column map {file} is not valid JSON (line {exc.lineno}): "
            'expected an object like {"their_col": "transaction_id"}'
        ) from exc
    return check_column_map(raw, origin=str(file))


def check_column_map(raw: object, origin: str = "column map") -> dict[str, str]:
    """Validate a ``{their: canonical}`` mapping: canonical targets, no target used twice."""
    if not isinstance(raw, Mapping):
        raise IngestError(
            f'{origin}: expected a JSON object like {{"their_col": "transaction_id"}}'
        )
    mapping: dict[str, str] = {}
    used: dict[str, str] = {}
    for source, target in raw.items():
        if not isinstance(source, str) or not isinstance(target, str):
            raise IngestError(f"{origin}: keys and values must be strings, got {source!r}")
        if target not in schema.LANDING_COLUMNS:
            raise IngestError(
                f"{origin}: {source!r} maps to unknown column {target!r}; "
                f"valid targets: {', '.join(schema.LANDING_COLUMNS)}"
            )
        if target in used:
            raise IngestError(
                f"{origin}: both {used[target]!r} and {source!r} map to {target!r}; keep one"
            )
        used[target] = source
        mapping[source] = target
    return mapping


def forbidden_columns(headers: Sequence[str]) -> list[str]:
    """Headers that look like card verification data or PINs (PCI DSS forbids storing them).

    A header is forbidden when its normalised name, or any ``_``-separated part
    of it, is in ``schema.FORBIDDEN_COLUMNS`` (so ``CVV2`` and ``card_cvv`` match).
    """
    found = []
    for header in headers:
        normalised = _NON_ALNUM.sub("_", header.strip().lower()).strip("_")
        parts = set(normalised.split("_")) | {normalised}
        if parts & schema.FORBIDDEN_COLUMNS:
            found.append(header)
    return found


def resolve_columns(
    headers: Sequence[str], column_map: Mapping[str, str], source: str
) -> dict[str, str]:
    """Map each usable header to its canonical name; check forbidden and required columns.

    Returns ``{header: canonical}`` for headers that are kept. Raises
    ``IngestError`` if the file carries sensitive authentication data, maps two
    headers to one column, or lacks a required column.
    """
    refused = forbidden_columns(headers)
    if refused:
        raise IngestError(
            f"{source}: refused the whole file: column(s) {', '.join(map(repr, refused))} "
            "look like card verification codes or PINs, which must never be stored (PCI DSS). "
            "Remove the column(s) from the file (or rename them if they are not sensitive) and "
            "ingest again; nothing from this file was stored"
        )
    canonical_by_lower = {name.lower(): name for name in schema.LANDING_COLUMNS}
    resolved: dict[str, str] = {}
    taken: dict[str, str] = {}
    for header in headers:
        target = column_map.get(header) or canonical_by_lower.get(header.strip().lower())
        if target is None:
            continue
        if target in taken:
            raise IngestError(
                f"{source}: columns {taken[target]!r} and {header!r} both provide {target!r}; "
                "drop one or map it elsewhere with --column-map"
            )
        taken[target] = header
        resolved[header] = target
    missing = [name for name in schema.REQUIRED_COLUMNS if name not in taken]
    if missing:
        raise IngestError(
            f"{source}: missing required column(s) {', '.join(missing)} "
            f"(file has: {', '.join(headers) or 'no columns'}). Map your own names with "
            '--column-map FILE.json, e.g. {"txn_id": "transaction_id"}'
        )
    return resolved
