"""The calibrator's hand-written fast paths give what scikit-learn's own predictions give."""

from __future__ import annotations

import numpy as np
import pytest

from shopguard.models.calibration import _TIE_BREAK, Calibrator


@pytest.fixture
def validation_scores() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(3)
    y = (rng.random(2_000) < 0.05).astype(int)
    s = rng.normal(0, 1, y.size) + 2.0 * y
    return s, y


@pytest.mark.parametrize("method", ["platt", "isotonic"])
def test_fast_transform_matches_sklearn(method: str, validation_scores: tuple[np.ndarray, np.ndarray]) -> None:
    s, y = validation_scores
    cal = Calibrator(method=method).fit(s, y)
    probe = np.concatenate([np.linspace(-6, 8, 301), s[:50], [s.min() - 1, s.max() + 1]])
    got = cal.transform(probe)
    if method == "platt":
        want = cal.model_.predict_proba(cal._platt_x(probe))[:, 1]
    else:
        want = (1 - _TIE_BREAK) * cal.model_.predict(probe) + _TIE_BREAK * cal._percentile(probe)
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
    assert np.all((got >= 0) & (got <= 1))


def test_single_event_is_scored_like_a_batch(validation_scores: tuple[np.ndarray, np.ndarray]) -> None:
    s, y = validation_scores
    cal = Calibrator(method="platt").fit(s, y)
    batch = cal.transform(s[:20])
    one_by_one = np.array([cal.transform([v])[0] for v in s[:20]])
    np.testing.assert_allclose(one_by_one, batch, rtol=1e-12)
