"""Trust checks (DESIGN §11): mocked locations, impossible travel, shared accounts/devices."""

from service.trust.checks import (
    Fix,
    FixVerdict,
    Sharing,
    TrustCheck,
    TrustChecker,
    TrustLimits,
    TrustStore,
    TrustUnavailable,
    count_failure,
    implied_speed_kmh,
    judge_fix,
    judge_sharing,
)
from service.trust.memory import MemoryTrustStore
from service.trust.redis_trust import RedisTrustStore

__all__ = [
    "Fix",
    "FixVerdict",
    "MemoryTrustStore",
    "RedisTrustStore",
    "Sharing",
    "TrustCheck",
    "TrustChecker",
    "TrustLimits",
    "TrustStore",
    "TrustUnavailable",
    "count_failure",
    "implied_speed_kmh",
    "judge_fix",
    "judge_sharing",
]
