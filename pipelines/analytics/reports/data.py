"""Reading the lake for reports: curated transactions through the catalog, in USD.

Reports go through ``run_query`` (the same SQL runs on Athena), and a
workspace with no curated data gets a clear message instead of a DuckDB error.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from pipelines.analytics.reports.document import ReportError
from pipelines.core.schema import DEFAULT_CURRENCY
from pipelines.core.workspace import Workspace
from pipelines.data.datagen.catalog import USD_RATE
from pipelines.data.lake import QueryError, run_query

# Units of currency per USD used to test amounts against the USD thresholds.
# The reference table is the one the synthetic data was generated with; a
# production deployment replaces it with the bank's daily rates.
REFERENCE_USD_RATES: dict[str, float] = dict(USD_RATE)


def query_frame(ws: Workspace, sql: str, params: dict[str, object]) -> pd.DataFrame:
    """Run SQL over the catalog; a missing table becomes a ReportError saying what to run."""
    try:
        return run_query(ws, sql, params).to_pandas()
    except QueryError as exc:
        if "does not exist" in str(exc):
            raise ReportError(
                f"the catalog has no data for this report ({exc}); ingest transactions first "
                "(`fraudops ingest` or `fraudops run`)"
            ) from exc
        raise


def day_range(start: date, end: date) -> tuple[str, str]:
    """The ``dt`` partition bounds as the text the hive partitions hold."""
    return start.isoformat(), end.isoformat()


def cash_transactions(ws: Workspace, start: date, end: date) -> pd.DataFrame:
    """Cash transactions (``is_cash`` true or channel ``atm``) with ``dt`` in [start, end]."""
    lo, hi = day_range(start, end)
    sql = (
        "SELECT transaction_id, timestamp, customer_id, terminal_id, amount, currency, "
        "channel, is_cash, card_masked FROM transactions "
        "WHERE dt BETWEEN $lo AND $hi AND (coalesce(is_cash, false) OR channel = 'atm')"
    )
    return query_frame(ws, sql, {"lo": lo, "hi": hi})


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
