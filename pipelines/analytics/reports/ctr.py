"""Currency Transaction Reports (31 CFR 1010.311/1010.313) and structuring flags.

Reportable: a person's cash transactions on one business day totalling *more
than* $10,000 (exactly $10,000 is not reportable), aggregated across all their
transactions and terminals (multiple transactions, 31 CFR 1010.313).

Rules, all parameters of :class:`CtrRules` / :class:`StructuringRule`:

* Cash = ``is_cash`` true, or channel ``atm`` (an ATM moves cash whatever the
  flag says). Amounts are converted to USD with the reference rates.
* Business day = the calendar day in ``timezone`` (default UTC); with
  ``cutoff_hour`` set, transactions at or after that local hour post to the next
  day; with ``weekends_roll_forward`` Saturday and Sunday post to Monday (a bank
  closed at weekends books them then). Public holidays are not modelled.
* Direction: the curated schema records no deposit/withdrawal direction, so
  cash in and out are aggregated together (conservative: never under-reports);
  the ATM (cash-out) share is shown separately.
* Filing due: 15 calendar days after the business day (31 CFR 1010.306(a)(1)).
* Structuring: ``min_transactions`` or more cash transactions each in
  ``[band_low, band_high)`` (just under the threshold) by one person within
  ``window_days`` (timestamps at most that many days apart), summing to more
  than ``min_total``. Overlapping windows merge into one episode. Episodes are
  routed to the SAR candidates report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, timedelta
from typing import Any

import pandas as pd

from pipelines.analytics.reports.data import (
    LakeReader,
    cash_transactions,
    padded,
    plain_rows,
    reader,
    with_usd,
)
from pipelines.analytics.reports.document import Report, Section, Table
from pipelines.core.workspace import Workspace

CTR_FILING_DAYS = 15


@dataclass(frozen=True)
class CtrRules:
    threshold_usd: float = 10_000.0  # reportable when the day's cash total is MORE than this
    timezone: str = "UTC"
    cutoff_hour: int = 0  # 0 = midnight; e.g. 17 books 17:00 onwards on the next day
    weekends_roll_forward: bool = True


@dataclass(frozen=True)
class StructuringRule:
    band_low_usd: float = 8_000.0  # inclusive
    band_high_usd: float = 10_000.0  # exclusive: just under the CTR threshold
    min_transactions: int = 2
    window_days: float = 3.0
    min_total_usd: float = 10_000.0  # the episode's total must be more than this

    def __post_init__(self) -> None:
        if not 0 < self.band_low_usd < self.band_high_usd:
            raise ValueError("structuring band must satisfy 0 < band_low_usd < band_high_usd")
        if self.min_transactions < 2:  # noqa: PLR2004 - structuring needs a split
            raise ValueError("structuring needs min_transactions >= 2")
        if self.window_days <= 0:
            raise ValueError("structuring window_days must be > 0")


def business_days(timestamps: pd.Series, rules: CtrRules) -> pd.Series:
    """The business day (``datetime.date``) each UTC timestamp is booked on."""
    local = pd.to_datetime(timestamps, utc=True).dt.tz_convert(rules.timezone)
    day = local.dt.tz_localize(None).dt.normalize()
    if rules.cutoff_hour:
        day = day + pd.to_timedelta((local.dt.hour >= rules.cutoff_hour).astype(int), unit="D")
    if rules.weekends_roll_forward:
        weekday = day.dt.weekday
        shift = weekday.map({5: 2, 6: 1}).fillna(0).astype(int)
        day = day + pd.to_timedelta(shift, unit="D")
    return day.dt.date


def _join(values: pd.Series) -> str:
    return ", ".join(sorted({str(v) for v in values if v is not None and v == v}))


def aggregate_ctr(cash: pd.DataFrame, rules: CtrRules) -> pd.DataFrame:
    """One row per person and business day whose cash total is more than the threshold.

    ``cash`` needs ``transaction_id, timestamp, customer_id, terminal_id,
    amount_usd, channel, card_masked``.
    """
    columns = ["customer_id", "business_day", "transactions", "terminals", "cash_total_usd",
               "atm_cash_out_usd", "other_cash_usd", "first_at", "last_at", "card_masked",
               "terminal_ids", "transaction_ids", "filing_due"]
    if cash.empty:
        return pd.DataFrame(columns=columns)
    frame = cash.assign(
        business_day=business_days(cash["timestamp"], rules),
        atm=cash["amount_usd"].where(cash["channel"] == "atm", 0.0),
    )
    grouped = frame.groupby(["customer_id", "business_day"], sort=True)
    totals = grouped["amount_usd"].sum().round(2)
    reportable = totals[totals > rules.threshold_usd].index
    rows = []
    for key in reportable:
        part = grouped.get_group(key).sort_values(["timestamp", "transaction_id"])
        total = round(float(part["amount_usd"].sum()), 2)
        atm = round(float(part["atm"].sum()), 2)
        rows.append({
            "customer_id": key[0], "business_day": key[1], "transactions": len(part),
            "terminals": int(part["terminal_id"].nunique()), "cash_total_usd": total,
            "atm_cash_out_usd": atm, "other_cash_usd": round(total - atm, 2),
            "first_at": part["timestamp"].min().isoformat(),
            "last_at": part["timestamp"].max().isoformat(),
            "card_masked": _join(part["card_masked"]),
            "terminal_ids": _join(part["terminal_id"]),
            "transaction_ids": ", ".join(part["transaction_id"]),
            "filing_due": key[1] + timedelta(days=CTR_FILING_DAYS),
        })
    return pd.DataFrame(rows, columns=columns)


def structuring_flags(cash: pd.DataFrame, rule: StructuringRule) -> list[dict[str, Any]]:
    """Episodes of repeated cash just under the threshold, per person (see module docstring)."""
    band = cash[(cash["amount_usd"] >= rule.band_low_usd)
                & (cash["amount_usd"] < rule.band_high_usd)]
    window = pd.Timedelta(days=rule.window_days)
    episodes = []
    for customer, part in band.sort_values(["timestamp", "transaction_id"]).groupby(
            "customer_id", sort=True):
        times = list(pd.to_datetime(part["timestamp"], utc=True))
        amounts = list(part["amount_usd"])
        spans: list[list[int]] = []  # [first, last] index ranges of flagged windows
        end = 0
        for start in range(len(times)):
            end = max(end, start)
            while end + 1 < len(times) and times[end + 1] - times[start] <= window:
                end += 1
            count, total = end - start + 1, sum(amounts[start:end + 1])
            if count >= rule.min_transactions and total > rule.min_total_usd:
                if spans and start <= spans[-1][1]:
                    spans[-1][1] = max(spans[-1][1], end)
                else:
                    spans.append([start, end])
        for first, last in spans:
            rows = part.iloc[first:last + 1]
            episodes.append(_episode(str(customer), rows))
    return episodes


def _episode(customer: str, rows: pd.DataFrame) -> dict[str, Any]:
    return {
        "customer_id": customer,
        "transactions": len(rows),
        "total_usd": round(float(rows["amount_usd"].sum()), 2),
        "first_at": rows["timestamp"].min().isoformat(),
        "last_at": rows["timestamp"].max().isoformat(),
        "amounts_usd": [round(float(a), 2) for a in rows["amount_usd"]],
        "terminal_ids": sorted(set(rows["terminal_id"])),
        "card_masked": sorted({c for c in rows["card_masked"] if c}),
        "transaction_ids": list(rows["transaction_id"]),
    }


@dataclass(frozen=True)
class CtrResult:
    reportable: pd.DataFrame
    structuring: list[dict[str, Any]]
    unconverted: pd.DataFrame
    cash_rows: int


def compute_ctr(ws: Workspace, start: date, end: date, rules: CtrRules | None = None,
                structuring: StructuringRule | None = None,
                lake: LakeReader | None = None) -> CtrResult:
    """CTR rows with business days in [start, end] and structuring episodes ending in it.

    ``lake`` is where the cash transactions are read (default: the workspace's).
    """
    rules, structuring = rules or CtrRules(), structuring or StructuringRule()
    # Weekend/cutoff roll-forward can book earlier days onto ``start``; the
    # structuring window reaches back too.
    lo, hi = padded(start, end, before_days=max(3, int(structuring.window_days) + 1),
                    after_days=1)
    cash, unconverted = with_usd(cash_transactions(reader(ws, lake), lo, hi))
    reportable = aggregate_ctr(cash, rules)
    if not reportable.empty:
        in_period = (reportable["business_day"] >= start) & (reportable["business_day"] <= end)
        reportable = reportable[in_period].reset_index(drop=True)
    episodes = [
        e for e in structuring_flags(cash, structuring)
        if start <= date.fromisoformat(e["last_at"][:10]) <= end
    ]
    return CtrResult(reportable, episodes, unconverted, len(cash))


def structuring_table(episodes: list[dict[str, Any]]) -> Table:
    return Table(
        "structuring_flags", "Structuring flags (routed to SAR candidates)",
        ["customer_id", "transactions", "total_usd", "first_at", "last_at", "amounts_usd",
         "card_masked", "transaction_ids"],
        [[e["customer_id"], e["transactions"], e["total_usd"], e["first_at"], e["last_at"],
          ", ".join(f"{a:,.2f}" for a in e["amounts_usd"]), ", ".join(e["card_masked"]),
          ", ".join(e["transaction_ids"])] for e in episodes],
    )


def build_ctr_report(ws: Workspace, start: date, end: date, rules: CtrRules | None = None,
                     structuring: StructuringRule | None = None,
                     lake: LakeReader | None = None) -> Report:
    """The ``ctr`` report: reportable person-days, structuring flags, the rules applied."""
    rules, structuring = rules or CtrRules(), structuring or StructuringRule()
    result = compute_ctr(ws, start, end, rules, structuring, lake)
    rules_text = (
        f"Reportable: cash (is_cash or ATM) totalling more than ${rules.threshold_usd:,.2f} "
        f"per person per business day, across all their transactions and terminals. Business "
        f"day: calendar day in {rules.timezone}"
        + (f", from {rules.cutoff_hour}:00 booked on the next day" if rules.cutoff_hour else "")
        + ("; Saturday and Sunday booked on Monday" if rules.weekends_roll_forward else "")
        + f". Filing due {CTR_FILING_DAYS} calendar days after the business day. Cash in and "
        "out are aggregated together because the data records no direction."
    )
    structuring_text = (
        f"Structuring: at least {structuring.min_transactions} cash transactions each between "
        f"${structuring.band_low_usd:,.2f} and ${structuring.band_high_usd:,.2f} (exclusive) by "
        f"one person within {structuring.window_days:g} days, totalling more than "
        f"${structuring.min_total_usd:,.2f}."
    )
    sections = [
        Section("Rules applied", [rules_text, structuring_text]),
        Section("Reportable cash transactions",
                [f"{len(result.reportable)} person-days to report, from {result.cash_rows:,} "
                 "cash transactions read."],
                [Table("ctr", "Currency transaction reports due",
                       list(result.reportable.columns), plain_rows(result.reportable))]),
        Section("Structuring", [f"{len(result.structuring)} episodes flagged."],
                [structuring_table(result.structuring)]),
    ]
    if not result.unconverted.empty:
        currencies = ", ".join(sorted(result.unconverted["currency"].dropna().unique()))
        sections.append(Section("Not converted", [
            f"{len(result.unconverted)} cash transactions in currencies without a reference "
            f"rate ({currencies}) were not tested against the USD threshold; review them by hand."
        ]))
    return Report(
        name="ctr", title="Currency Transaction Report candidates", period_start=start,
        period_end=end, sections=sections,
        data={"rules": asdict(rules), "structuring_rule": asdict(structuring),
              "ctr": result.reportable.to_dict(orient="records"),
              "structuring_flags": result.structuring},
        summary={"ctr_person_days": len(result.reportable),
                 "structuring_episodes": len(result.structuring),
                 "cash_transactions": result.cash_rows},
    )
