"""Reading the lake for reports: the same named queries on DuckDB and on Athena, in USD.

Every report reads through a :class:`LakeReader`: :class:`LocalLake` runs the
report queries (``pipelines/data/lake/queries/reports/*.sql``, Athena SQL)
over the workspace's lake, transpiled for DuckDB; :class:`AthenaLake` sends
the very same text to Athena with bound execution parameters. A workspace with
no curated data gets a clear message instead of a DuckDB error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta
from typing import TYPE_CHECKING, Protocol

import pandas as pd

from pipelines.analytics.reports.document import ReportError
from pipelines.core.schema import DEFAULT_CURRENCY
from pipelines.core.workspace import Workspace
from pipelines.data.datagen.catalog import USD_RATE
from pipelines.data.lake.named_queries import REPORT_QUERY_DIR, get_query

if TYPE_CHECKING:
    from pipelines.data.lake.athena_client import AthenaRunner

# Units of currency per USD used to test amounts against the USD thresholds.
# The reference table is the one the synthetic data was generated with; a
# production deployment replaces it with the bank's daily rates.
REFERENCE_USD_RATES: dict[str, float] = dict(USD_RATE)
# Report queries over the alert/case queue: locally the queue is exported first.
_QUEUE_QUERIES = frozenset({"report_period_alerts"})


class LakeReader(Protocol):
    """Runs one report query (by name, with its declared parameters) into a frame."""

    def frame(self, name: str, params: dict[str, object]) -> pd.DataFrame: ...


@dataclass(frozen=True)
class LocalLake:
    """The workspace's lake, read as Athena reads the stack's tables (DuckDB)."""

    ws: Workspace

    def frame(self, name: str, params: dict[str, object]) -> pd.DataFrame:
        from pipelines.analytics.runner import run_as_on_athena
        from pipelines.data.lake import QueryError

        if name in _QUEUE_QUERIES and self.ws.cases_db.exists():
            from pipelines.analytics.exports import export_queue

            export_queue(self.ws)  # cases change as they are worked: read their state now
        try:
            return run_as_on_athena(self.ws, get_query(name, REPORT_QUERY_DIR),
                                    params).to_pandas()
        except QueryError as exc:
            if "'transactions'" in str(exc):
                raise ReportError(
                    f"the catalog has no data for this report ({exc}); ingest transactions "
                    "first (`fraudops ingest` or `fraudops run`)"
                ) from exc
            raise


@dataclass(frozen=True)
class AthenaLake:
    """The stack's Glue tables through Athena: the same query text, parameters bound."""

    runner: AthenaRunner

    def frame(self, name: str, params: dict[str, object]) -> pd.DataFrame:
        return self.runner.run_named(get_query(name, REPORT_QUERY_DIR), params).to_pandas()


def reader(ws: Workspace, lake: LakeReader | None) -> LakeReader:
    """``lake`` when given (Athena on AWS), else the workspace's own lake."""
    return lake if lake is not None else LocalLake(ws)


def day_range(start: date, end: date) -> dict[str, object]:
    """The report queries' day parameters: ``dt`` bounds as the partitions' text."""
    return {"start_day": start.isoformat(), "end_day": end.isoformat()}


def cash_transactions(lake: LakeReader, start: date, end: date) -> pd.DataFrame:
    """Cash transactions (``is_cash`` true or channel ``atm``) with ``dt`` in [start, end]."""
    return lake.frame("report_cash_transactions", day_range(start, end))


def with_usd(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(converted, unconverted)``: ``amount_usd`` added where the currency has a rate.

    A missing currency is the default (USD). Rows in currencies without a
    reference rate are returned separately so the report can list them rather
    than silently compare foreign amounts to a USD threshold.
    """
    currency = frame["currency"].fillna(DEFAULT_CURRENCY).str.upper()
    rate = currency.map(REFERENCE_USD_RATES)
    known = rate.notna()
    converted = frame[known].copy()
    converted["currency"] = currency[known]
    converted["amount_usd"] = (converted["amount"] / rate[known]).round(2)
    return converted, frame[~known].copy()


def padded(start: date, end: date, before_days: int, after_days: int = 0) -> tuple[date, date]:
    return start - timedelta(days=before_days), end + timedelta(days=after_days)


def plain(value: object) -> object:
    """numpy/pandas scalars as Python values, NaN/NaT as None, dates as ISO text."""
    if value is None or (isinstance(value, float) and value != value) or value is pd.NaT:
        return None
    if hasattr(value, "item"):
        return plain(value.item())
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def plain_rows(frame: pd.DataFrame) -> list[list[object]]:
    """A frame's rows as lists of plain values (for tables, CSV and JSON)."""
    return [[plain(v) for v in row] for row in frame.itertuples(index=False, name=None)]
