"""Campaign reports: per arm counts, conversion rates, and lift with a 95 % interval.

Converted = an exposed user with a ``purchase`` event within the attribution window
(default 72 h) after their first exposure. Lift is the difference of conversion rates,
treatment minus control, with a Wald 95 % interval (normal approximation, z = 1.96),
plus the relative lift over control. With an empty arm the interval is null.
"""

from __future__ import annotations

import math
from datetime import timedelta
from typing import Any

from sqlalchemy import Engine

from service.campaigns import repository as campaigns_repo
from service.errors import NotFound
from service.offers import repository as repo

Z95 = 1.959963984540054


def lift(conv_t: int, n_t: int, conv_c: int, n_c: int) -> dict[str, float | None]:
    """Absolute and relative lift of treatment over control with a Wald 95 % interval.

    >>> lift(30, 100, 20, 100)["absolute"]
    0.1
    """
    if n_t == 0 or n_c == 0:
        return {"absolute": None, "ci95_low": None, "ci95_high": None, "relative": None}
    p_t, p_c = conv_t / n_t, conv_c / n_c
    diff = p_t - p_c
    se = math.sqrt(p_t * (1 - p_t) / n_t + p_c * (1 - p_c) / n_c)
    return {
        "absolute": round(diff, 6),
        "ci95_low": round(diff - Z95 * se, 6),
        "ci95_high": round(diff + Z95 * se, 6),
        "relative": round(diff / p_c, 6) if p_c > 0 else None,
    }


def campaign_report(
    engine: Engine,
    campaign_id: str,
    attribution_h: float = 72.0,
    conversion_event: str = "purchase",
) -> dict[str, Any]:
    with engine.connect() as conn:
        if campaigns_repo.get(conn, campaign_id) is None:
            raise NotFound(f"no campaign {campaign_id!r}")
        arms = repo.report_counts(
            conn, campaign_id, timedelta(hours=attribution_h), conversion_event
        )
    out_arms: dict[str, dict[str, Any]] = {}
    for name in ("treatment", "control"):
        a = arms.get(name, {"exposed": 0, "issued": 0, "redeemed": 0, "converted": 0})
        rate = a["converted"] / a["exposed"] if a["exposed"] else None
        out_arms[name] = {**a, "conversion_rate": None if rate is None else round(rate, 6)}
    t, c = arms.get("treatment", {}), arms.get("control", {})
    return {
        "campaign_id": campaign_id,
        "attribution_window_h": attribution_h,
        "conversion_event": conversion_event,
        "arms": out_arms,
        "lift": lift(
            t.get("converted", 0), t.get("exposed", 0), c.get("converted", 0), c.get("exposed", 0)
        ),
    }
