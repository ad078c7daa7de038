"""Reason codes: why a transaction scored high, in words an investigator can act on.

``TEMPLATES`` maps every feature of :mod:`pipelines.data.features.definitions` to a
function ``(value, context) -> text``; ``context`` holds the transaction's
feature values and raw fields (``amount``, ``channel``, ``country``, ...).
Templates for windowed features are generated from the same window lists the
definitions use, so a new window gets its sentence too; a new kind of feature
without a template fails ``tests/test_stream.py``.

``explain`` renders the top contributing features (XGBoost ``pred_contribs``
via ``inference.contributions``) as reason strings.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from pipelines.core.schema import CHANNELS
from pipelines.data.features.definitions import (
    CUSTOMER_WINDOWS,
    NO_PREVIOUS_TX_SECONDS,
    TERMINAL_WINDOWS,
)

Template = Callable[[float, Mapping[str, Any]], str]

SPANS = {"1h": "hour", "1d": "24 hours", "7d": "7 days", "30d": "30 days"}
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
TOP_N = 3


def span(window_name: str) -> str:
    """``"7d"`` -> ``"7 days"`` (unknown names are shown as they are)."""
    return SPANS.get(window_name, window_name)


def text(pattern: str, **fixed: Any) -> Template:
    """A sentence formatted with ``value``, the context and ``fixed`` fields."""

    def render(value: float, context: Mapping[str, Any]) -> str:
        return pattern.format(**{**_defaults(context), **fixed, "value": value})

    return render


def flag(when_set: str, when_clear: str) -> Template:
    """A 0/1 feature: one sentence when it is 1, another when it is 0."""

    def render(value: float, context: Mapping[str, Any]) -> str:
        pattern = when_set if value >= 0.5 else when_clear  # noqa: PLR2004
        return pattern.format(**_defaults(context))

    return render


def duration(seconds: float) -> str:
    """``93`` -> ``"1.6 minutes"``: the largest unit that keeps the number readable."""
    for unit, size in (("days", 86400), ("hours", 3600), ("minutes", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return f"{seconds:.0f} seconds"


def _since_previous(value: float, context: Mapping[str, Any]) -> str:
    if value >= NO_PREVIOUS_TX_SECONDS:
        return "first transaction seen on this card"
    return f"only {duration(value)} since this card's previous transaction"


def _defaults(context: Mapping[str, Any]) -> dict[str, Any]:
    values = {k: v for k, v in context.items() if v is not None}
    values.setdefault("channel", "this")
    values.setdefault("country", "this country")
    values.setdefault("currency", "")
    return values


def _templates() -> dict[str, Template]:
    templates: dict[str, Template] = {}
    for w in CUSTOMER_WINDOWS:
        templates[f"cust_tx_count_{w.name}"] = text(
            "{value:.0f} transactions on this card in the last {span}", span=span(w.name)
        )
        templates[f"cust_avg_amount_{w.name}"] = text(
            "this card's average amount over the last {span} is {value:,.2f}", span=span(w.name)
        )
    templates.update(
        amount_to_cust_avg_30d=text("amount is {value:.1f}x this card's 30-day average"),
        amount_zscore_30d=text(
            "amount is {value:.1f} standard deviations from this card's 30-day mean"
        ),
        log_amount=text("amount of {amount:,.2f} {currency}"),
        seconds_since_prev_tx=_since_previous,
        new_terminal_for_customer=flag(
            "first transaction at this terminal", "at a terminal this card has used before"
        ),
        new_channel_for_customer=flag(
            "first {channel} transaction on this card", "{channel} channel, used before"
        ),
        new_country_for_customer=flag(
            "first transaction in {country} on this card", "in {country}, used before"
        ),
        hour_of_day=text("at {value:02.0f}:00 UTC"),
        hour_sin=text("time of day ({hour_of_day:02.0f}:00 UTC)"),
        hour_cos=text("time of day ({hour_of_day:02.0f}:00 UTC)"),
        day_of_week=lambda value, context: f"on a {WEEKDAYS[int(value) % 7]}",
        is_weekend=flag("on a weekend", "on a weekday"),
        is_night=flag("at night (00:00-05:59 UTC)", "during the day"),
        is_cash_tx=flag("cash transaction", "not a cash transaction"),
    )
    for channel in CHANNELS:
        label = channel.replace("_", " ")
        templates[f"channel_{channel}"] = flag(f"{label} channel", f"not a {label} transaction")
    for w in TERMINAL_WINDOWS:
        templates[f"term_tx_count_{w.name}"] = text(
            "{value:.0f} transactions at this terminal in the last {span}", span=span(w.name)
        )
        templates[f"term_fraud_count_{w.name}"] = text(
            "terminal had {value:.0f} confirmed frauds in the last {span}", span=span(w.name)
        )
        templates[f"term_fraud_rate_{w.name}"] = text(
            "{value:.1%} of this terminal's transactions in the last {span} were confirmed fraud",
            span=span(w.name),
        )
    return templates


TEMPLATES: dict[str, Template] = _templates()


def render(feature: str, value: float | str | None, context: Mapping[str, Any]) -> str:
    """One feature's sentence; a feature without a template (the user's own columns) is
    shown as ``name = value``, a categorical one with its text."""
    if value is None:
        return f"{feature} unknown"
    template = TEMPLATES.get(feature)
    if template is None:
        return f"{feature} = {value}" if isinstance(value, str) else f"{feature} = {value:g}"
    return template(float(value), context)


def explain(top: list[Mapping[str, Any]], context: Mapping[str, Any]) -> list[str]:
    """Sentences for ``inference.contributions``' ``top`` entries, most important first.

    Only features pushing towards fraud (positive contribution) are reasons;
    identical sentences (e.g. ``hour_sin`` and ``hour_cos``) are given once.
    """
    reasons: list[str] = []
    for entry in top:
        if entry["contribution"] <= 0:
            continue
        sentence = render(entry["feature"], entry["value"], context)
        if sentence not in reasons:
            reasons.append(sentence)
    return reasons[:TOP_N]
