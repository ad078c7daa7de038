"""Mapping a user's own column names onto the canonical schema.

A column map is a JSON object ``{"their_column": "canonical_column"}``, or, to
say more about the data, ``{"columns": {...}, "time_origin": "ISO-8601",
"time_unit": "hours"}`` (``time_origin``: numeric times count from that instant,
as ``--time-origin`` does; ``time_unit``: in what, as ``--time-unit`` does,
seconds unless said). Columns already named canonically need no entry;
headers that differ from a canonical name only by case or surrounding spaces
are matched too. A column mapped to ``feature:numeric`` or
``feature:categorical`` is the user's own model feature, stored under its own
name. Columns that map to nothing are ignored (never stored), except
sensitive authentication data, which refuses the whole file.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

from pipelines.compliance.carddata import is_sensitive_auth_field
from pipelines.core import schema
from pipelines.data.ingest.errors import IngestError

_SETTINGS = ("columns", "time_origin", "time_unit")  # the keys of the structured form
# What a numeric time counts from a time origin: the unit's length in seconds. The one
# definition of the units (the CLI's --time-unit choices, the column map's "time_unit").
TIME_UNITS: dict[str, int] = {"seconds": 1, "minutes": 60, "hours": 3_600, "days": 86_400}
DEFAULT_TIME_UNIT = "seconds"
FEATURE_NUMERIC = "feature:numeric"
FEATURE_CATEGORICAL = "feature:categorical"
FEATURE_KINDS = (FEATURE_NUMERIC, FEATURE_CATEGORICAL)
# Names a user feature may not take: curated columns (it is stored beside them).
_TAKEN_NAMES = frozenset(n.lower() for n in (*schema.LANDING_COLUMNS, *schema.CURATED_SCHEMA.names))


class ColumnMap(dict[str, str]):
    """``{their column: canonical column}``, plus the file's ``time_origin`` and
    ``time_unit`` if it set them.

    A plain dict everywhere a mapping is expected, so callers that only map
    columns need not know about the settings.
    """

    def __init__(self, columns: Mapping[str, str] | Iterable[tuple[str, str]] = (),
                 time_origin: datetime | None = None, time_unit: str | None = None) -> None:
        super().__init__(columns)
        self.time_origin = time_origin
        self.time_unit = time_unit


def load_column_map(path: str | Path) -> ColumnMap:
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


def effective_time_origin(flag: datetime | None,
                          column_map: Mapping[str, str] | None) -> datetime | None:
    """The origin numeric times count from: ``--time-origin``, else the column map's."""
    return flag or getattr(column_map, "time_origin", None)


def effective_time_unit(flag: str | None, column_map: Mapping[str, str] | None,
                        time_origin: datetime | None) -> str:
    """What numeric times count in: ``--time-unit``, else the column map's, else seconds.

    ``time_origin`` is the effective origin (``effective_time_origin``): a unit
    given without one would silently do nothing (epoch times are seconds), so it
    is refused, naming both settings.
    """
    unit = flag or getattr(column_map, "time_unit", None)
    if unit is None:
        return DEFAULT_TIME_UNIT
    parse_time_unit(unit)
    if time_origin is None:
        raise IngestError(
            f"time unit {unit!r} (--time-unit, or \"time_unit\" in the column map) needs a "
            "time origin the numbers count from: pass --time-origin ISO8601 too (or set "
            "\"time_origin\" in the column map), or drop the unit if the times are epoch seconds")
    return unit


def parse_time_unit(text: object, origin: str = "--time-unit") -> str:
    """One of ``TIME_UNITS``, else an ``IngestError`` naming the choices."""
    if text not in TIME_UNITS:
        raise IngestError(f"{origin}: {text!r} is not a time unit; give one of "
                          f"{', '.join(TIME_UNITS)}")
    return str(text)


def unit_microseconds(unit: str) -> int:
    """Microseconds in one ``unit`` (exact: the lake stores microseconds)."""
    return TIME_UNITS[parse_time_unit(unit, "time unit")] * 1_000_000


def epoch_micros(instant: datetime) -> int:
    """An aware datetime as integer microseconds since the epoch (exact: no float)."""
    delta = instant - datetime(1970, 1, 1, tzinfo=UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def parse_time_origin(text: str, origin: str = "--time-origin") -> datetime:
    """An ISO-8601 instant (``Z`` or an offset; none means UTC) for relative numeric times."""
    try:
        instant = datetime.fromisoformat(text.strip())
    except (AttributeError, ValueError):
        raise IngestError(
            f"{origin}: {text!r} is not an ISO-8601 time; give e.g. 2013-09-01T00:00:00Z"
        ) from None
    return instant if instant.tzinfo else instant.replace(tzinfo=UTC)


def check_column_map(raw: object, origin: str = "column map") -> ColumnMap:
    """Validate a column map (either form): canonical targets, no target used twice."""
    if not isinstance(raw, Mapping):
        raise IngestError(
            f'{origin}: expected a JSON object like {{"their_col": "transaction_id"}}'
        )
    time_origin = time_unit = None
    if isinstance(raw.get("columns"), Mapping):  # the structured form
        unknown = [key for key in raw if key not in _SETTINGS]
        if unknown:
            raise IngestError(f"{origin}: unknown setting(s) {', '.join(map(repr, unknown))}; "
                              f"expected {', '.join(_SETTINGS)}")
        if raw.get("time_origin") is not None:
            time_origin = parse_time_origin(raw["time_origin"], f"{origin}: time_origin")
        if raw.get("time_unit") is not None:
            time_unit = parse_time_unit(raw["time_unit"], f"{origin}: time_unit")
        raw = raw["columns"]
    mapping = ColumnMap(time_origin=time_origin, time_unit=time_unit)
    used: dict[str, str] = {}
    for source, target in raw.items():
        if not isinstance(source, str) or not isinstance(target, str):
            raise IngestError(f"{origin}: keys and values must be strings, got {source!r}")
        if target in FEATURE_KINDS:
            _check_feature_name(source, origin)
            mapping[source] = target
            continue
        if target not in schema.LANDING_COLUMNS:
            raise IngestError(
                f"{origin}: {source!r} maps to unknown column {target!r}; valid targets: "
                f"{', '.join(schema.LANDING_COLUMNS)}, or {' / '.join(FEATURE_KINDS)} to make "
                "it a model feature of its own"
            )
        if target in used:
            raise IngestError(
                f"{origin}: both {used[target]!r} and {source!r} map to {target!r}; keep one"
            )
        used[target] = source
        mapping[source] = target
    return mapping


def _check_feature_name(name: str, origin: str) -> None:
    """A user feature keeps its name in curated data: it must not clash with ours."""
    if name.strip().lower() in _TAKEN_NAMES or name.startswith("_") or not name.strip():
        raise IngestError(
            f"{origin}: feature column {name!r} cannot keep that name (it is a built-in "
            "column, blank or starts with '_'): rename the column in your file and in the map"
        )


def user_features(column_map: Mapping[str, str]) -> dict[str, str]:
    """``{column: feature kind}`` of the columns the map declares model features."""
    return {name: kind for name, kind in column_map.items() if kind in FEATURE_KINDS}


def forbidden_columns(headers: Sequence[str]) -> list[str]:
    """Headers that look like card verification data, PINs or track data (PCI DSS forbids
    storing them), however they are spelt: ``CVV2``, ``CVVNumber``, ``cardPin``,
    ``security_code``, ``Track 2 Data`` (``carddata.is_sensitive_auth_field``).
    """
    return [header for header in headers if is_sensitive_auth_field(header)]


# A cell that is a value, not a name: a number, a date or time, or digits with separators.
_VALUE_LIKE = re.compile(r"[\s+\-]*[0-9][0-9\s.,:/+\-TZ]*")


def check_header(headers: Sequence[str], column_map: Mapping[str, str], source: str) -> None:
    """Refuse a CSV whose first line is data, not a header, with a message saying so.

    Without this the first row's values would be listed as "columns" (and a
    card number among them would reach the message). A header is missing when
    none of its cells names a known column and at least one looks like a value.
    """
    known = {name.lower() for name in schema.LANDING_COLUMNS} | {k.strip().lower()
                                                                   for k in column_map}
    if any(header.strip().lower() in known for header in headers):
        return
    if any(_VALUE_LIKE.fullmatch(header.strip()) for header in headers):
        raise IngestError(
            f"{source}: the first line is not a header: none of its {len(headers)} cells names "
            "a known column and some look like values (numbers or dates). Add a header line "
            f"naming the columns (e.g. {','.join(schema.REQUIRED_COLUMNS)}) and ingest again"
        )


def resolve_columns(
    headers: Sequence[str], column_map: Mapping[str, str], source: str
) -> dict[str, str]:
    """Map each usable header to its canonical name; check forbidden and required columns.

    Returns ``{header: canonical}`` for headers that are kept (a user feature's
    target is its kind, ``feature:numeric``/``feature:categorical``). Raises
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
        if target in FEATURE_KINDS:
            resolved[header] = target
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
            '--column-map FILE.json, e.g. {"txn_time": "timestamp", "value": "amount"}'
        )
    return resolved
