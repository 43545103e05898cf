"""Calibrated probability -> risk level -> action, from a typed policy.

Models score; this layer decides. A ``Policy`` holds three probability thresholds (medium, high,
critical) and the action for each level. ``Policy.choose`` picks the thresholds on the validation slice
either for a target false-positive rate (``high`` flags at most ``target_fpr`` of normal events) or for
an alert budget (``high`` flags ``alert_rate`` of all events); medium and critical sit at 5x and 1/10
of that rate. ``high`` is the operating threshold the evaluation's confusion matrix uses.

>>> p = Policy(medium=0.2, high=0.5, critical=0.9)
>>> p.level(0.6), p.action_for(p.level(0.6))
(<RiskLevel.HIGH: 'high'>, <Action.CHALLENGE: 'challenge'>)
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from shopguard.decision.reasons import Reason
from shopguard.errors import ValidationFailed


class RiskLevel(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


class Action(StrEnum):
    ALLOW = "allow"
    REVIEW = "review"
    CHALLENGE = "challenge"
    BLOCK = "block"


_LEVEL_ORDER = (RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL)


def _default_actions() -> dict[RiskLevel, Action]:
    return {RiskLevel.LOW: Action.ALLOW, RiskLevel.MEDIUM: Action.REVIEW, RiskLevel.HIGH: Action.CHALLENGE,
            RiskLevel.CRITICAL: Action.BLOCK}


class Policy(BaseModel):
    """Thresholds on the calibrated probability and the action per risk level."""

    model_config = ConfigDict(extra="forbid")

    # A threshold above 1 is never reached: that level is switched off.
    medium: float = Field(0.1, ge=0.0, description="Probability from which an event is medium risk.")
    high: float = Field(0.5, ge=0.0, description="Operating threshold: high risk from here.")
    critical: float = Field(0.9, ge=0.0, description="Probability from which an event is critical.")
    actions: dict[RiskLevel, Action] = Field(default_factory=_default_actions)
    objective: Literal["manual", "target_fpr", "alert_budget"] = "manual"
    target_fpr: float | None = Field(None, gt=0.0, lt=1.0)
    alert_rate: float | None = Field(None, gt=0.0, lt=1.0)
    probability_kind: Literal["probability", "percentile"] = "probability"
    validation: dict[str, Any] = Field(default_factory=dict, description="What the thresholds did on validation data.")

    @model_validator(mode="after")
    def _ordered(self) -> Policy:
        if not self.medium <= self.high <= self.critical:
            raise ValueError(f"thresholds must satisfy medium <= high <= critical, got "
                             f"{self.medium} / {self.high} / {self.critical}")
        missing = [lvl.value for lvl in RiskLevel if lvl not in self.actions]
        if missing:
            raise ValueError(f"actions: no action for risk level(s) {missing}")
        return self

    # -- applying ---------------------------------------------------------------------------------------
    @property
    def operating_threshold(self) -> float:
        return self.high

    def level(self, probability: float) -> RiskLevel:
        return self.levels(np.asarray([probability]))[0]

    def levels(self, probabilities: Any) -> list[RiskLevel]:
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        idx = (p >= self.medium).astype(int) + (p >= self.high) + (p >= self.critical)
        return [_LEVEL_ORDER[i] for i in idx]

    def action_for(self, level: RiskLevel) -> Action:
        return self.actions[level]

    # -- choosing ---------------------------------------------------------------------------------------
    @classmethod
    def choose(
        cls,
        probabilities: Any,
        y: Any | None = None,
        *,
        target_fpr: float | None = 0.01,
        alert_rate: float | None = None,
        probability_kind: Literal["probability", "percentile"] = "probability",
        actions: dict[RiskLevel, Action] | None = None,
    ) -> Policy:
        """Thresholds from validation probabilities (and labels, for a target false-positive rate).

        ``alert_rate`` (share of all events to alert on) wins over ``target_fpr`` when both are given.
        Without labels a target FPR is read against all events (fraud is rare, so nearly the same).
        """
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        if p.size == 0:
            raise ValidationFailed("choosing thresholds needs validation probabilities", field="probabilities")
        labels = None if y is None else np.asarray(y).reshape(-1).astype(np.int64)
        if labels is not None and labels.shape != p.shape:
            raise ValidationFailed("labels and probabilities differ in length", field="y")
        if alert_rate is not None:
            if not 0 < alert_rate < 1:
                raise ValidationFailed(f"alert_rate must be in (0, 1), got {alert_rate}", field="alert_rate",
                                       value=alert_rate)
            pool, rate, objective = p, alert_rate, "alert_budget"
        else:
            if target_fpr is None or not 0 < target_fpr < 1:
                raise ValidationFailed(f"target_fpr must be in (0, 1), got {target_fpr}", field="target_fpr",
                                       value=target_fpr)
            has_neg = labels is not None and (labels == 0).any()
            pool = p[labels == 0] if has_neg else p  # type: ignore[index]
            rate, objective = target_fpr, "target_fpr"
        medium = _threshold_for_rate(pool, min(0.5, 5 * rate))
        high = _threshold_for_rate(pool, rate)
        critical = _threshold_for_rate(pool, rate / 10)
        medium, high = min(medium, high), high
        critical = max(critical, high)
        policy = cls(
            medium=medium, high=high, critical=critical, actions=actions or _default_actions(), objective=objective,
            target_fpr=target_fpr if objective == "target_fpr" else None,
            alert_rate=alert_rate if objective == "alert_budget" else None, probability_kind=probability_kind,
        )
        policy.validation = policy.describe_on(p, labels)
        return policy

    def describe_on(self, probabilities: Any, y: Any | None = None) -> dict[str, Any]:
        """Share of events (and, with labels, FPR and recall) at or above each threshold."""
        p = np.asarray(probabilities, dtype=np.float64).reshape(-1)
        labels = None if y is None else np.asarray(y).reshape(-1).astype(np.int64)
        out: dict[str, Any] = {"events": int(p.size)}
        for name in ("medium", "high", "critical"):
            t = getattr(self, name)
            flagged = p >= t
            row: dict[str, float] = {"threshold": t, "alert_share": float(flagged.mean()) if p.size else 0.0}
            if labels is not None and (labels == 0).any():
                row["fpr"] = float(flagged[labels == 0].mean())
            if labels is not None and (labels == 1).any():
                row["recall"] = float(flagged[labels == 1].mean())
            out[name] = row
        return out


def _threshold_for_rate(values: np.ndarray, rate: float) -> float:
    """Smallest threshold flagging at most ``rate`` of ``values`` (flag means value >= threshold)."""
    s = np.sort(values)[::-1]
    allowed = int(np.floor(rate * s.size + 1e-9))
    if allowed >= s.size:
        return float(max(0.0, s[-1]))
    # Just above the first value that must not be flagged (may exceed 1: then nothing is flagged).
    return float(max(0.0, np.nextafter(s[allowed], np.inf)))


class Decision(BaseModel):
    """What shopguard answers for one event."""

    model_config = ConfigDict(extra="forbid")

    event_id: str
    score: float
    probability: float
    risk_level: RiskLevel
    action: Action
    reasons: list[Reason] = Field(default_factory=list)
    rule_hits: list[str] = Field(default_factory=list)
    model_version: str = ""
    latency_ms: float = 0.0

    def to_record(self, decided_at: datetime | None = None) -> dict[str, Any]:
        """The row ``EventStore.append_decisions`` takes (reasons and rule hits as JSON)."""
        return {
            "event_id": self.event_id,
            "decided_at": decided_at or datetime.now(UTC).replace(tzinfo=None),
            "score": self.score,
            "probability": self.probability,
            "risk_level": self.risk_level.value,
            "action": self.action.value,
            "reasons": json.dumps([r.model_dump() for r in self.reasons]),
            "rule_hits": json.dumps(self.rule_hits),
            "model_version": self.model_version,
            "latency_ms": self.latency_ms,
        }
