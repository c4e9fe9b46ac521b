"""What an endpoint's answer means for a delivery: delivered, retry when, or give up.

Only a 2xx is a success (redirects are not followed). 410 Gone disables the endpoint.
Anything else is retried with exponential backoff and jitter until ``retry_for_s`` (about
three days) has passed since the delivery was created; on 429, 502, 503 and 504 a
``Retry-After`` (seconds or an HTTP date) replaces the computed delay.

>>> p = RetryPolicy(base_s=5, max_s=3600, retry_for_s=3 * 86400, retry_after_max_s=86400)
>>> [round(p.backoff_s(n, jitter=1.0)) for n in (1, 2, 3, 10, 20)]
[5, 10, 20, 2560, 3600]
>>> p.classify(204, None).kind, p.classify(410, None).kind, p.classify(500, None).kind
('delivered', 'gone', 'retry')
>>> p.classify(503, "120").retry_after_s
120.0
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Literal

#: Statuses whose Retry-After is honoured (DESIGN §10, and 503 as RFC 9110 defines it).
RETRY_AFTER_STATUSES = frozenset({429, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Outcome:
    kind: Literal["delivered", "gone", "retry"]
    status_code: int | None = None
    error: str | None = None
    retry_after_s: float | None = None


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    base_s: float
    max_s: float
    retry_for_s: float
    retry_after_max_s: float

    def backoff_s(self, attempt: int, jitter: float | None = None) -> float:
        """Delay after failed attempt number ``attempt`` (1-based): ``base * 2^(n-1)``
        capped at ``max_s``, times a jitter in [0.5, 1] so endpoints that failed together
        are not retried in lockstep."""
        raw = min(self.max_s, self.base_s * 2.0 ** min(attempt - 1, 60))
        factor = random.uniform(0.5, 1.0) if jitter is None else jitter
        return raw * factor

    def classify(self, status_code: int, retry_after: str | None) -> Outcome:
        if 200 <= status_code < 300:
            return Outcome("delivered", status_code)
        if status_code == 410:
            return Outcome("gone", status_code, "410 Gone: the endpoint asked to be disabled")
        wait = None
        if status_code in RETRY_AFTER_STATUSES and retry_after:
            wait = parse_retry_after(retry_after)
            if wait is not None:
                wait = min(wait, self.retry_after_max_s)
        return Outcome("retry", status_code, f"HTTP {status_code}", wait)

    def next_attempt_s(self, outcome: Outcome, attempt: int) -> float:
        """Seconds until the next attempt after a failed ``attempt``."""
        if outcome.retry_after_s is not None:
            return outcome.retry_after_s
        return self.backoff_s(attempt)


def parse_retry_after(value: str, now: datetime | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` value (delta-seconds or an HTTP date).

    >>> parse_retry_after("30"), parse_retry_after("soon")
    (30.0, None)
    >>> parse_retry_after("Thu, 01 Jan 2026 00:01:00 GMT", datetime(2026, 1, 1, tzinfo=UTC))
    60.0
    """
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return max(0.0, (at - (now or datetime.now(UTC))).total_seconds())
