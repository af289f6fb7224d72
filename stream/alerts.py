"""The negative-surge rule: is the recent negative share of an entity well above its own baseline?

The rule itself is a pure function over counts (unit-tested on hand-built series); the worker feeds
it sums read from Redis and claims a per-(rule, entity) cooldown there before publishing.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Literal

RULE_NAME = "negative_surge"


@dataclass(frozen=True)
class SurgeParams:
    """Thresholds of the rule. No defaults here: they live once, in the settings
    (``FINPULSE_ALERT_*``, ``StreamSettings.surge_params()``)."""

    min_count: int
    method: Literal["z", "ratio"]
    min_z: float
    min_ratio: float
    floor: float
    prior_share: float
    prior_weight: float
    critical_share: float


@dataclass(frozen=True)
class SurgeDecision:
    fire: bool
    share: float
    baseline_share: float
    z: float
    ratio: float
    severity: Literal["warning", "critical"]
    reason: str


def evaluate_surge(recent_n: int, recent_neg: int, baseline_n: int, baseline_neg: int, p: SurgeParams) -> SurgeDecision:
    """Decide on one entity.

    The baseline share is smoothed towards ``prior_share`` with ``prior_weight`` pseudo-events, so an
    entity with little history is compared with a sensible prior rather than with 0/0.
    """
    share = recent_neg / recent_n if recent_n else 0.0
    base = (baseline_neg + p.prior_share * p.prior_weight) / (baseline_n + p.prior_weight)
    base = min(max(base, 1e-6), 1 - 1e-6)
    z = (share - base) / math.sqrt(base * (1 - base) / recent_n) if recent_n else 0.0
    ratio = share / base
    severity: Literal["warning", "critical"] = (
        "critical" if share >= p.critical_share or (p.method == "z" and z >= 2 * p.min_z) else "warning"
    )

    def no(reason: str) -> SurgeDecision:
        return SurgeDecision(False, share, base, z, ratio, severity, reason)

    if recent_n < p.min_count:
        return no(f"count {recent_n} < min {p.min_count}")
    if share < p.floor:
        return no(f"share {share:.2f} < floor {p.floor:.2f}")
    if p.method == "z" and z < p.min_z:
        return no(f"z {z:.2f} < {p.min_z:.2f}")
    if p.method == "ratio" and ratio < p.min_ratio:
        return no(f"ratio {ratio:.2f} < {p.min_ratio:.2f}")
    return SurgeDecision(True, share, base, z, ratio, severity, "surge")


def alert_id(rule: str, kind: str, entity: str, window_start_ms: int, window_end_ms: int) -> str:
    """Deterministic: the same rule, entity and window always give the same id (consumers can dedupe)."""
    raw = f"{rule}|{kind}|{entity}|{window_start_ms}|{window_end_ms}".encode()
    return hashlib.sha256(raw).hexdigest()[:24]
