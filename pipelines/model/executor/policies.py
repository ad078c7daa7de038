"""Cache expiry and retry policies of pipeline steps, as SageMaker reads them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from pipelines.model.executor.errors import RETRYABLE_EXCEPTION_TYPES, ExecutorError

_DURATION = re.compile(
    r"^P(?:(?P<years>\d+)Y)?(?:(?P<months>\d+)M)?(?:(?P<weeks>\d+)W)?(?:(?P<days>\d+)D)?"
    r"(?:T(?:(?P<hours>\d+)H)?(?:(?P<minutes>\d+)M)?(?:(?P<seconds>\d+)S)?)?$"
)


def parse_duration(text: str) -> timedelta:
    """ISO-8601 duration of a CacheConfig ExpireAfter (``P30D``, ``PT1H``, ``P1W``).

    Case-insensitive and with an optional leading ``P``, as the SDK's own
    examples (``'p30d'``, ``'T12H'``) show SageMaker accepts.
    """
    normalized = (text or "").strip().upper()
    if not normalized.startswith("P"):
        normalized = "P" + normalized
    match = _DURATION.match(normalized)
    if not match or normalized in ("P", "PT"):
        raise ExecutorError(
            f"CacheConfig ExpireAfter {text!r} is not an ISO-8601 duration (e.g. P30D, PT12H)"
        )
    parts = {k: int(v) for k, v in match.groupdict().items() if v}
    days = parts.get("years", 0) * 365 + parts.get("months", 0) * 30 + parts.get("days", 0)
    return timedelta(
        days=days,
        weeks=parts.get("weeks", 0),
        hours=parts.get("hours", 0),
        minutes=parts.get("minutes", 0),
        seconds=parts.get("seconds", 0),
    )


def retry_delay(
    policies: list[dict[str, Any]], exception_type: str, retries_so_far: int, elapsed: float
) -> float | None:
    """Seconds to wait before the next attempt, or None to give up.

    The first policy naming the failure type applies. MaxAttempts counts
    retries (as on SageMaker); ExpireAfterMin bounds the time since the first
    attempt started (``elapsed`` seconds ago).
    """
    if exception_type not in RETRYABLE_EXCEPTION_TYPES:
        return None
    policy = next((p for p in policies if exception_type in (p.get("ExceptionType") or [])), None)
    if policy is None:
        return None
    max_attempts = policy.get("MaxAttempts")
    if max_attempts is not None and retries_so_far >= int(max_attempts):
        return None
    interval = float(policy.get("IntervalSeconds", 1))
    wait = interval * float(policy.get("BackoffRate", 2.0)) ** retries_so_far
    expire = policy.get("ExpireAfterMin")
    if expire is not None and elapsed + wait > float(expire) * 60:
        return None
    return wait
