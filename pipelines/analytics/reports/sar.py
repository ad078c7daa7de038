"""Suspicious Activity Report candidates, grouped by subject, in FinCEN SAR field groups.

Sources, for activity in the report period:

* alerts whose case was closed ``escalate_sar`` (every alert grouped into it too);
* high-severity alerts whose case is not closed as ``false_positive``;
* structuring episodes from the CTR logic (:mod:`pipelines.analytics.reports.ctr`).

Filing due date (31 CFR 1020.320(d) style): 30 calendar days after the date of
initial detection; when no subject is identified, 30 more days to identify one,
i.e. 60 days. ``detected_at`` is the conservative (earliest) detection time:
the first alert's ``raised_at``, or for structuring the time of the
transaction that completed the pattern (the earliest moment it was detectable).

Card numbers appear only as ``card_masked`` (first 6 + last 4) from the
curated table; the clear number never exists after ingestion. The alerts and
their cases are read from the lake's ``alerts`` and ``cases`` tables (the
queue exported locally; on AWS what the alert Lambda and the case commands write).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from pipelines.analytics.reports.ctr import CtrRules, StructuringRule, compute_ctr
from pipelines.analytics.reports.data import LakeReader, day_range, plain, reader
from pipelines.analytics.reports.document import Report, Section, Table
from pipelines.core.workspace import Workspace

SAR_DUE_DAYS = 30
SAR_DUE_DAYS_NO_SUBJECT = 60
UNIDENTIFIED_SUBJECTS = frozenset({"", "unknown", "anonymous", "none", "null"})

CARD_FRAUD = "Fraud - credit/debit card"
ACCOUNT_TAKEOVER = "Fraud - account takeover"
COMPROMISED_TERMINAL = "Fraud - credit/debit card (compromised terminal)"
CARD_TESTING = "Fraud - credit/debit card (card testing)"
STRUCTURING = "Structuring"
# Reason-code phrases (pipelines.serving.online.reasons) that point to a FinCEN category.
REASON_CATEGORIES: tuple[tuple[str, str], ...] = (
    ("confirmed fraud", COMPROMISED_TERMINAL),
    ("transactions on this card in the last hour", CARD_TESTING),
    ("first transaction in", ACCOUNT_TAKEOVER),
    ("first ecommerce transaction", ACCOUNT_TAKEOVER),
    ("first atm transaction", ACCOUNT_TAKEOVER),
)


def subject_identified(customer_id: str | None) -> bool:
    return customer_id is not None and customer_id.strip().lower() not in UNIDENTIFIED_SUBJECTS


def filing_due(detected_at: datetime | date, identified: bool) -> date:
    """30 calendar days after initial detection; 60 when no subject is identified."""
    day = detected_at.date() if isinstance(detected_at, datetime) else detected_at
    return day + timedelta(days=SAR_DUE_DAYS if identified else SAR_DUE_DAYS_NO_SUBJECT)


def categories_from_reasons(reasons: list[str]) -> set[str]:
    """FinCEN activity categories suggested by an alert's reason codes (card fraud if none)."""
    found = {category for phrase, category in REASON_CATEGORIES
             for reason in reasons if phrase in reason.lower()}
    return found or {CARD_FRAUD}


@dataclass
class Candidate:
    subject: str
    alerts: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)

    def cards(self) -> list[str]:
        """Masked cards of the alerted transactions and of the structuring episodes."""
        found = {a.get("card_masked") for a in self.alerts}
        found |= {card for e in self.episodes for card in e["card_masked"]}
        return sorted(card for card in found if card)

    def transaction_ids(self) -> list[str]:
        ids = [a["transaction_id"] for a in self.alerts]
        ids += [t for e in self.episodes for t in e["transaction_ids"]]
        return sorted(set(ids))


def _period_alerts(lake: LakeReader, start: date, end: date) -> list[dict[str, Any]]:
    """Every alert with its (primary) case's disposition, transactions in [start, end]."""
    frame = lake.frame("report_period_alerts", day_range(start, end))
    rows = [{k: plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]
    return [{**row, "reasons": json.loads(row["reasons"] or "[]")} for row in rows]


def _is_candidate(alert: dict[str, Any]) -> bool:
    if alert["disposition"] == "escalate_sar":
        return True
    return alert["severity"] == "high" and alert["disposition"] != "false_positive"


def collect_candidates(alerts: list[dict[str, Any]],
                       episodes: list[dict[str, Any]]) -> list[Candidate]:
    """Group SAR-worthy alerts (with their whole case) and structuring episodes by subject."""
    escalated_cases = {a["case_id"] for a in alerts if _is_candidate(a)}
    by_subject: dict[str, Candidate] = {}
    for alert in alerts:
        if alert["case_id"] in escalated_cases:
            key = alert["card_id"] or f"unidentified:{alert['case_id']}"
            by_subject.setdefault(key, Candidate(alert["card_id"] or "")).alerts.append(alert)
    for episode in episodes:
        key = episode["customer_id"]
        by_subject.setdefault(key, Candidate(key)).episodes.append(episode)
    return [by_subject[k] for k in sorted(by_subject)]


def _narrative(candidate: Candidate, total: float, first: str, last: str,
               categories: list[str]) -> str:
    who = (f"customer {candidate.subject}" if subject_identified(candidate.subject)
           else "an unidentified subject")
    cards = candidate.cards()
    when = (f"On {first[:10]}" if first[:10] == last[:10]
            else f"Between {first[:10]} and {last[:10]}")
    count = len(candidate.transaction_ids())
    parts = [f"{when}, {who}" + (f" (card {', '.join(cards)})" if cards else "")
             + f" conducted {count} transaction{'s' if count != 1 else ''} totalling "
             f"${total:,.2f} that {'are' if count != 1 else 'is'} reported as "
             f"{', '.join(categories).lower()}."]
    if candidate.alerts:
        top = max(candidate.alerts, key=lambda a: a["score"])
        reasons = sorted({r for a in candidate.alerts for r in a["reasons"]})
        parts.append(
            f"The fraud model raised {len(candidate.alerts)} alert(s), highest score "
            f"{top['score']:.2f} ({top['severity']} severity)"
            + (f"; reasons: {'; '.join(reasons)}." if reasons else "; no reason codes recorded.")
        )
        for case_id in sorted({a["case_id"] for a in candidate.alerts}):
            case = next(a for a in candidate.alerts if a["case_id"] == case_id)
            if case["disposition"]:
                parts.append(f"Case {case_id} was closed as {case['disposition']} by "
                             f"{case['closed_by'] or 'an investigator'} on "
                             f"{(case['closed_at'] or '')[:10]}.")
            else:
                parts.append(f"Case {case_id} is {case['status']}.")
    for episode in candidate.episodes:
        parts.append(
            f"Structuring: {episode['transactions']} cash transactions of "
            f"{', '.join(f'${a:,.2f}' for a in episode['amounts_usd'])} between "
            f"{episode['first_at'][:16]} and {episode['last_at'][:16]} (total "
            f"${episode['total_usd']:,.2f}), each below the $10,000 CTR threshold."
        )
    return " ".join(parts)


def _to_datetime(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def describe_candidate(candidate: Candidate) -> dict[str, Any]:
    """One SAR candidate in FinCEN field groups (subject, activity, narrative, filing)."""
    times = [a["tx_timestamp"] for a in candidate.alerts]
    times += [t for e in candidate.episodes for t in (e["first_at"], e["last_at"])]
    amounts = {a["transaction_id"]: float(a["amount"] or 0.0) for a in candidate.alerts}
    for episode in candidate.episodes:
        amounts.update(zip(episode["transaction_ids"], episode["amounts_usd"], strict=True))
    total = round(sum(amounts.values()), 2)
    categories = sorted(
        {c for a in candidate.alerts for c in categories_from_reasons(a["reasons"])}
        | ({STRUCTURING} if candidate.episodes else set())
    )
    detections = [_to_datetime(a["raised_at"]) for a in candidate.alerts]
    detections += [_to_datetime(e["last_at"]) for e in candidate.episodes]
    detected_at = min(detections)
    identified = subject_identified(candidate.subject)
    first, last = min(times), max(times)
    cards = candidate.cards()
    return {
        "subject": {"customer_id": candidate.subject or None, "identified": identified,
                    "card_masked": cards},
        "activity": {"from": first[:10], "to": last[:10], "total_amount_usd": total,
                     "transactions": len(candidate.transaction_ids()),
                     "transaction_ids": candidate.transaction_ids(),
                     "categories": categories},
        "sources": {"case_ids": sorted({a["case_id"] for a in candidate.alerts}),
                    "alert_ids": [a["alert_id"] for a in candidate.alerts],
                    "dispositions": sorted({a["disposition"] for a in candidate.alerts
                                            if a["disposition"]}),
                    "structuring_episodes": len(candidate.episodes)},
        "narrative": _narrative(candidate, total, first, last, categories),
        "detected_at": detected_at.isoformat(),
        "filing_due": filing_due(detected_at, identified).isoformat(),
        "due_rule": (f"{SAR_DUE_DAYS} days after detection" if identified else
                     f"{SAR_DUE_DAYS_NO_SUBJECT} days after detection (no subject identified)"),
    }


def build_sar_report(ws: Workspace, start: date, end: date, rules: CtrRules | None = None,
                     structuring: StructuringRule | None = None,
                     lake: LakeReader | None = None) -> Report:
    """The ``sar-candidates`` report for activity in [start, end]."""
    alerts = _period_alerts(reader(ws, lake), start, end)
    episodes = compute_ctr(ws, start, end, rules, structuring, lake).structuring
    candidates = collect_candidates(alerts, episodes)
    described = [describe_candidate(c) for c in candidates]
    rows = [[d["subject"]["customer_id"] or "(unidentified)",
             ", ".join(d["subject"]["card_masked"]),
             d["activity"]["from"], d["activity"]["to"], d["activity"]["total_amount_usd"],
             "; ".join(d["activity"]["categories"]), d["detected_at"], d["filing_due"],
             d["narrative"]] for d in described]
    rule_text = (
        f"Filing due {SAR_DUE_DAYS} calendar days after initial detection, "
        f"{SAR_DUE_DAYS_NO_SUBJECT} when no subject is identified (31 CFR 1020.320(d)). Detection "
        "is the first alert's raised time, or for structuring the time of the transaction "
        "completing the pattern. Candidates: escalated cases (escalate_sar), high-severity "
        "alerts not dismissed as false positives, and structuring flags from the CTR rules."
    )
    return Report(
        name="sar-candidates", title="Suspicious Activity Report candidates",
        period_start=start, period_end=end,
        sections=[
            Section("Basis", [rule_text]),
            Section("Candidates", [f"{len(described)} subjects to consider for a SAR."],
                    [Table("sar_candidates", "SAR candidates",
                           ["customer_id", "card_masked", "activity_from", "activity_to",
                            "total_amount_usd", "categories", "detected_at", "filing_due",
                            "narrative"], rows)]),
        ],
        data={"candidates": described},
        summary={"candidates": len(described),
                 "from_alerts": sum(1 for c in candidates if c.alerts),
                 "from_structuring": sum(1 for c in candidates if c.episodes)},
    )
