"""Decision policy: thresholds chosen on validation data, levels, actions; calibration."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from shopguard.decision import Action, Decision, Policy, Reason, RiskLevel
from shopguard.errors import ValidationFailed
from shopguard.models.calibration import Calibrator


@pytest.fixture
def validation() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    y = (rng.random(5000) < 0.05).astype(int)
    s = rng.normal(size=y.size) + 2.5 * y
    return s, y


def test_levels_and_actions() -> None:
    p = Policy(medium=0.2, high=0.5, critical=0.9)
    assert p.levels([0.0, 0.2, 0.5, 0.95]) == [RiskLevel.LOW, RiskLevel.MEDIUM, RiskLevel.HIGH, RiskLevel.CRITICAL]
    assert [p.action_for(lvl) for lvl in RiskLevel] == [Action.ALLOW, Action.REVIEW, Action.CHALLENGE, Action.BLOCK]
    custom = Policy(medium=0.2, high=0.5, critical=0.9, actions={**p.actions, RiskLevel.HIGH: Action.REVIEW})
    assert custom.action_for(RiskLevel.HIGH) is Action.REVIEW


def test_policy_is_typed() -> None:
    with pytest.raises(ValidationError, match="medium <= high <= critical"):
        Policy(medium=0.6, high=0.5, critical=0.9)
    with pytest.raises(ValidationError):
        Policy(high=-0.1)
    with pytest.raises(ValidationError):
        Policy(surprise=1)  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="no action"):
        Policy(actions={RiskLevel.LOW: Action.ALLOW})
    again = Policy.model_validate_json(Policy(medium=0.1, high=0.3, critical=0.8).model_dump_json())
    assert again.high == 0.3 and again.actions[RiskLevel.CRITICAL] is Action.BLOCK


@pytest.mark.parametrize("target", [0.005, 0.01, 0.05])
def test_choose_for_target_fpr(validation: tuple[np.ndarray, np.ndarray], target: float) -> None:
    s, y = validation
    prob = Calibrator().fit(s, y).transform(s)
    p = Policy.choose(prob, y, target_fpr=target)
    fpr = (prob[y == 0] >= p.high).mean()
    assert fpr <= target
    assert fpr >= target * 0.5  # not absurdly conservative either
    assert p.medium <= p.high <= p.critical
    assert p.validation["high"]["fpr"] == pytest.approx(fpr)
    assert p.objective == "target_fpr"


def test_choose_for_alert_budget(validation: tuple[np.ndarray, np.ndarray]) -> None:
    s, _ = validation
    prob = Calibrator().fit(s).transform(s)  # no labels: percentiles
    p = Policy.choose(prob, alert_rate=0.02, probability_kind="percentile")
    share = (prob >= p.high).mean()
    assert 0.015 <= share <= 0.02
    assert p.objective == "alert_budget" and p.alert_rate == 0.02


def test_choose_rejects_bad_rates(validation: tuple[np.ndarray, np.ndarray]) -> None:
    s, y = validation
    with pytest.raises(ValidationFailed, match="target_fpr"):
        Policy.choose(s, y, target_fpr=0)
    with pytest.raises(ValidationFailed, match="alert_rate"):
        Policy.choose(s, y, alert_rate=2.0)


@pytest.mark.parametrize("method", ["isotonic", "platt"])
def test_calibration_is_monotone_and_calibrated(validation: tuple[np.ndarray, np.ndarray], method: str) -> None:
    s, y = validation
    cal = Calibrator(method).fit(s, y)  # type: ignore[arg-type]
    grid = np.linspace(s.min() - 1, s.max() + 1, 400)
    p = cal.transform(grid)
    assert np.all(np.diff(p) >= -1e-12) and p.min() >= 0 and p.max() <= 1
    assert cal.is_probability
    # Mean predicted probability close to the base rate.
    assert cal.transform(s).mean() == pytest.approx(y.mean(), abs=0.01)


def test_calibration_without_labels_is_percentile(validation: tuple[np.ndarray, np.ndarray]) -> None:
    s, _ = validation
    cal = Calibrator().fit(s)
    assert cal.kind_ == "percentile" and not cal.is_probability
    assert cal.transform([s.max() + 1])[0] == 1.0
    with pytest.raises(ValidationFailed):
        Calibrator("isotonic").fit(s)


@given(st.lists(st.floats(0, 1), min_size=1, max_size=50), st.floats(0.001, 0.5))
@settings(max_examples=50, deadline=None)
def test_alert_budget_never_exceeded(values: list[float], rate: float) -> None:
    p = np.asarray(values)
    pol = Policy.choose(p, alert_rate=rate)
    assert (p >= pol.high).mean() <= rate + 1e-12


def test_decision_record() -> None:
    d = Decision(event_id="e1", score=2.0, probability=0.7, risk_level=RiskLevel.HIGH, action=Action.CHALLENGE,
                 reasons=[Reason(code="AMOUNT", text="amount 950.00", weight=1.2)], model_version="m1")
    rec = d.to_record()
    assert rec["action"] == "challenge" and rec["risk_level"] == "high"
    assert json.loads(rec["reasons"])[0]["text"] == "amount 950.00"
