"""Trust checks (DESIGN §11): mocked locations, impossible travel, shared accounts/devices."""

from service.trust.checks import (
    REASON,
    Fix,
    Observation,
    TrustCheck,
    TrustChecker,
    TrustLimits,
    TrustPing,
    TrustStore,
    TrustVerdict,
    implied_speed_kmh,
    judge,
)
from service.trust.memory import MemoryTrustStore
from service.trust.redis_trust import RedisTrustStore, ScriptCall

__all__ = [
    "REASON",
    "Fix",
    "MemoryTrustStore",
    "Observation",
    "RedisTrustStore",
    "ScriptCall",
    "TrustCheck",
    "TrustChecker",
    "TrustLimits",
    "TrustPing",
    "TrustStore",
    "TrustVerdict",
    "implied_speed_kmh",
    "judge",
]
