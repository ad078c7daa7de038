"""The named-query library: one Athena SQL file per question, read from ``queries/``.

Each file starts with a header of ``--`` comment lines::

    -- Fraud rate by day                                  (first line: the title)
    -- answers: how many transactions arrive each day and which share is fraud
    -- param: start_day varchar '0001-01-01' first day included (yyyy-MM-dd)
    -- param: end_day varchar '9999-12-31' last day included (yyyy-MM-dd)

and then one SELECT in Athena (Trino) SQL that refers to its parameters as
``:name``. The same text runs locally (DuckDB, transpiled by sqlglot, which
binds ``:name`` as ``$name``), on Athena (``:name`` -> ``?`` with
``ExecutionParameters``) and as QuickSight custom SQL (defaults inlined).
Counting a condition is written ``count(CASE WHEN ... THEN 1 END)``, not
``count_if``: DuckDB's ``count_if`` gives NULL (not 0) when the condition is
NULL on every row, Athena's gives 0. This module is plain Python so the Athena
and QuickSight companions can load the library without any engine installed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path

QUERY_DIR = Path(__file__).resolve().parent / "queries"
# The regulatory reports' queries: the same text on DuckDB and Athena, kept apart
# from the analysts' library (which also becomes QuickSight datasets).
REPORT_QUERY_DIR = QUERY_DIR / "reports"
PARAM_TYPES: dict[str, type] = {"varchar": str, "integer": int, "double": float}

_PARAM_LINE = re.compile(
    r"^param:\s+(?P<name>[a-z_][a-z0-9_]*)\s+(?P<type>\w+)\s+"
    r"(?P<default>'(?:[^']|'')*'|-?[0-9]+(?:\.[0-9]+)?)\s*(?P<help>.*)$"
)
# A ``:name`` placeholder: not part of ``::`` and not inside a quoted literal (split out first).
_PLACEHOLDER = re.compile(r"(?<![:\w]):([a-z_][a-z0-9_]*)\b")
_QUOTED = re.compile(r"('(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*)")


class NamedQueryError(ValueError):
    """A query file or a parameter value is wrong; the message names the file or parameter."""


@dataclass(frozen=True)
class Param:
    """One declared parameter: name, SQL type, default and what it means."""

    name: str
    type: str
    default: object
    help: str

    def coerce(self, value: object, query: str) -> object:
        """Convert a user value (often command-line text) to the declared type."""
        try:
            converted = PARAM_TYPES[self.type](value)
        except (TypeError, ValueError) as exc:
            raise NamedQueryError(
                f"query {query!r}: parameter {self.name} must be {self.type}, got {value!r}"
            ) from exc
        is_day = self.type == "varchar" and self.name.endswith("_day")
        if is_day and not re.fullmatch(r"[0-9]{4}-[0-9]{2}-[0-9]{2}", str(converted)):
            raise NamedQueryError(
                f"query {query!r}: parameter {self.name} is a day: use yyyy-MM-dd, got {value!r}"
            )
        return converted


@dataclass(frozen=True)
class NamedQuery:
    """A question answered by one SELECT over the lake tables."""

    name: str
    title: str
    answers: str
    params: tuple[Param, ...]
    sql: str
    path: Path

    def bind(self, values: dict[str, object] | None = None) -> dict[str, object]:
        """Every declared parameter's value: the given one (type-checked) or the default."""
        values = dict(values or {})
        declared = {p.name for p in self.params}
        unknown = sorted(set(values) - declared)
        if unknown:
            raise NamedQueryError(
                f"query {self.name!r} has no parameter {', '.join(unknown)}; "
                f"it takes: {', '.join(sorted(declared)) or 'none'}"
            )
        return {
            p.name: p.coerce(values[p.name], self.name) if p.name in values else p.default
            for p in self.params
        }

    def positional(self, values: dict[str, object] | None = None) -> tuple[str, list[str]]:
        """The SQL with ``?`` placeholders and Athena ``ExecutionParameters`` in order.

        Athena applies execution parameters in the order the ``?`` appear, and
        each one is a SQL literal (text quoted), so strings are quoted here.
        """
        bound = self.bind(values)
        order: list[str] = []

        def swap(match: re.Match[str]) -> str:
            order.append(match.group(1))
            return "?"

        sql = _outside_literals(self.sql, lambda text: _PLACEHOLDER.sub(swap, text))
        return sql, [sql_literal(bound[name]) for name in order]

    def with_literals(self, values: dict[str, object] | None = None) -> str:
        """The SQL with every parameter inlined as a literal (QuickSight custom SQL).

        Only for values that come from the declared defaults or typed config,
        never from an untrusted user: they pass through ``sql_literal``.
        """
        bound = self.bind(values)
        return _outside_literals(
            self.sql, lambda text: _PLACEHOLDER.sub(lambda m: sql_literal(bound[m.group(1)]), text)
        )


def sql_literal(value: object) -> str:
    """A value as an Athena SQL literal: numbers as is, text single-quoted and escaped."""
    if isinstance(value, bool) or value is None:
        raise NamedQueryError(f"unsupported parameter value {value!r}")
    if isinstance(value, int | float):
        return repr(value)
    return "'" + str(value).replace("'", "''") + "'"


def _outside_literals(sql: str, transform) -> str:
    """Apply ``transform`` to the SQL text outside quoted literals and comments."""
    parts = _QUOTED.split(sql)
    return "".join(part if index % 2 else transform(part) for index, part in enumerate(parts))


def _parse_default(text: str, kind: str, where: str) -> object:
    if text.startswith("'"):
        if kind != "varchar":
            raise NamedQueryError(f"{where}: a quoted default needs type varchar, not {kind}")
        return text[1:-1].replace("''", "'")
    return PARAM_TYPES[kind](float(text) if kind == "double" else int(text))


def parse_query_file(path: Path) -> NamedQuery:
    """Read one ``.sql`` file; raise ``NamedQueryError`` naming the file and line if malformed."""
    lines = path.read_text(encoding="utf-8").splitlines()
    header: list[tuple[int, str]] = []
    for number, line in enumerate(lines, start=1):
        if not line.startswith("--"):
            break
        header.append((number, line[2:].strip()))
    if not header or not header[0][1]:
        raise NamedQueryError(f"{path}: line 1 must be a '-- Title' comment")
    answers, params = "", []
    for number, text in header[1:]:
        where = f"{path}:{number}"
        if text.startswith("answers:"):
            answers = (answers + " " + text.removeprefix("answers:").strip()).strip()
        elif text.startswith("param:"):
            match = _PARAM_LINE.match(text)
            if not match or match["type"] not in PARAM_TYPES:
                raise NamedQueryError(
                    f"{where}: expected 'param: NAME TYPE DEFAULT help' with TYPE one of "
                    f"{', '.join(PARAM_TYPES)}, got {text!r}"
                )
            default = _parse_default(match["default"], match["type"], where)
            params.append(Param(match["name"], match["type"], default, match["help"]))
    if not answers:
        raise NamedQueryError(f"{path}: the header needs an '-- answers: ...' line")
    sql = "\n".join(lines[len(header):]).strip().rstrip(";").strip()
    _check_placeholders(path, sql, params)
    return NamedQuery(path.stem, header[0][1], answers, tuple(params), sql, path)


def _check_placeholders(path: Path, sql: str, params: list[Param]) -> None:
    used: set[str] = set()
    _outside_literals(sql, lambda text: used.update(_PLACEHOLDER.findall(text)) or text)
    declared = {p.name for p in params}
    if used - declared:
        raise NamedQueryError(f"{path}: undeclared parameter(s) {sorted(used - declared)}")
    if declared - used:
        raise NamedQueryError(f"{path}: declared but unused parameter(s) {sorted(declared - used)}")


@cache
def load_library(directory: Path = QUERY_DIR) -> dict[str, NamedQuery]:
    """Every named query in ``directory``, by name (the file name without ``.sql``)."""
    return {q.name: q for q in map(parse_query_file, sorted(directory.glob("*.sql")))}


def get_query(name: str, directory: Path = QUERY_DIR) -> NamedQuery:
    """The named query ``name``; the error lists the names that exist."""
    library = load_library(directory)
    if name not in library:
        raise NamedQueryError(
            f"no named query {name!r}; available: {', '.join(sorted(library))}"
        )
    return library[name]
