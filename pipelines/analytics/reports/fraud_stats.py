"""Payment fraud statistics (EBA guidelines on fraud reporting, PSD2 art. 96(6) style).

Volume and value of all transactions and of fraudulent ones, and fraud rates by
count and by value, per month and quarter, per channel and per fraud type.
The fraud flag is the latest label (late labels override the curated
``is_fraud``); values are in USD at the reference rates. A column the data
does not carry (all null) makes its section say so instead of inventing data.
"""

from __future__ import annotations

from datetime import date

import pandas as pd

from pipelines.analytics.reports.data import (
    REFERENCE_USD_RATES,
    LakeReader,
    day_range,
    plain_rows,
    reader,
)
from pipelines.analytics.reports.document import Chart, Report, Section, Series, Table
from pipelines.core.workspace import Workspace

MEASURES = ["transactions", "value_usd", "fraud_transactions", "fraud_value_usd",
            "fraud_rate_count_pct", "fraud_rate_value_pct"]


def grouped_counts(ws: Workspace, start: date, end: date,
                   lake: LakeReader | None = None) -> pd.DataFrame:
    """Counts and USD values per month, quarter, channel and fraud type.

    The query counts in each transaction's currency (the same SQL on DuckDB and
    Athena); the reference rates convert here, and a currency without a rate is
    counted as ``unconverted`` with no value.
    """
    frame = reader(ws, lake).frame("report_fraud_counts", day_range(start, end))
    rate = frame["currency"].map(REFERENCE_USD_RATES)
    frame["value_usd"] = (frame["amount"] / rate).fillna(0.0)
    frame["fraud_value_usd"] = (frame["fraud_amount"] / rate).fillna(0.0)
    frame["unconverted"] = frame["transactions"].where(rate.isna(), 0)
    return frame.drop(columns=["currency", "amount", "fraud_amount"])


def rates_table(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
    """Sum the measures over ``by`` and add the fraud rates (percent, 4 decimals)."""
    summed = frame.groupby(by, dropna=False)[
        ["transactions", "value_usd", "fraud_transactions", "fraud_value_usd"]].sum().reset_index()
    summed["value_usd"] = summed["value_usd"].round(2)
    summed["fraud_value_usd"] = summed["fraud_value_usd"].round(2)
    counts = summed["transactions"].where(summed["transactions"] > 0)
    summed["fraud_rate_count_pct"] = (100 * summed["fraud_transactions"] / counts).round(4)
    summed["fraud_rate_value_pct"] = (
        100 * summed["fraud_value_usd"] / summed["value_usd"].where(summed["value_usd"] > 0)
    ).round(4)
    return summed


def _table(name: str, title: str, frame: pd.DataFrame) -> Table:
    return Table(name, title, list(frame.columns), plain_rows(frame))


def _dimension_section(frame: pd.DataFrame, column: str, title: str, fraud_only: bool) -> Section:
    """Rates per quarter and ``column`` (frauds only: counts and values per fraud type)."""
    source = frame[frame["fraud_transactions"] > 0] if fraud_only else frame
    if not source[column].notna().any():
        return Section(title, [f"The data has no {column} values, so fraud cannot be broken "
                               f"down by {column.replace('_', ' ')}."])
    table = rates_table(source.fillna({column: "(not recorded)"}), ["quarter", column])
    if fraud_only:
        table = table[["quarter", column, "fraud_transactions", "fraud_value_usd"]]
    return Section(title, [], [_table(f"by_quarter_{column}", title, table)])


def _monthly_rates_chart(by_month: pd.DataFrame) -> Chart:
    rates = [0.0 if pd.isna(v) else float(v) for v in by_month["fraud_rate_value_pct"]]
    return Chart("Fraud rate by value, per month (%)", "bar",
                 [Series("fraud rate by value", list(by_month["month"]), rates)],
                 x_label="month", y_label="% of value")


def build_fraud_stats_report(ws: Workspace, start: date, end: date,
                             lake: LakeReader | None = None) -> Report:
    """The ``fraud-stats`` report for transactions dated in [start, end]."""
    frame = grouped_counts(ws, start, end, lake)
    notes = [
        "Fraud = the latest label (investigator dispositions and chargebacks override the "
        "ingested flag). Values in USD at the reference rates. Rates are percentages."
    ]
    if int(frame["unlabelled"].sum()):
        notes.append(f"{int(frame['unlabelled'].sum()):,} transactions have no fraud label; "
                     "they count in volume and value but never as fraud.")
    if int(frame["unconverted"].sum()):
        notes.append(f"{int(frame['unconverted'].sum()):,} transactions in currencies without "
                     "a reference rate are counted but carry no value.")
    by_month = rates_table(frame, ["month"])
    by_quarter = rates_table(frame, ["quarter"])
    sections = [
        Section("Basis", notes),
        Section("By period", [], [_table("by_month", "By month", by_month),
                                  _table("by_quarter", "By quarter", by_quarter)],
                [_monthly_rates_chart(by_month)]),
        _dimension_section(frame, "channel", "By channel", fraud_only=False),
        _dimension_section(frame, "fraud_type", "By fraud type", fraud_only=True),
    ]
    totals = rates_table(frame.assign(all="all"), ["all"]).iloc[0]
    summary = {k: (totals[k].item() if hasattr(totals[k], "item") else totals[k])
               for k in MEASURES}
    return Report(
        name="fraud-stats", title="Payment fraud statistics", period_start=start,
        period_end=end, sections=sections,
        data={"by_month": by_month.to_dict(orient="records"),
              "by_quarter": by_quarter.to_dict(orient="records")},
        summary=summary,
    )
