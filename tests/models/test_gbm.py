"""LightGBM specifics: native categories, time-ordered early stopping, exact contributions."""

from __future__ import annotations

from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from shopguard.errors import DataError, ValidationFailed
from shopguard.models import LightGBMDetector


def _frame(n: int = 3000, seed: int = 1) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    merchant = rng.choice([f"m{i}" for i in range(30)], n)
    risky = np.isin(merchant, ["m3", "m17", "m25"])  # fraud lives at three merchants: only a category split sees it
    amount = rng.lognormal(3, 1, n)
    y = ((risky & (rng.random(n) < 0.5)) | (rng.random(n) < 0.005)).astype(int)
    ts = [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(n)]
    return pl.DataFrame({"event_id": [f"e{i}" for i in range(n)], "ts": ts, "merchant": merchant,
                         "amount": amount}).with_columns(pl.col("merchant").cast(pl.Categorical)), y


def test_native_categorical_split_and_validation() -> None:
    X, y = _frame()
    det = LightGBMDetector(n_estimators=200).fit(X[:2000], y[:2000])
    assert det.encoder_.categorical == ["merchant"] and det.used_validation_
    assert det.best_iteration_ < 200  # early stopping on the late slice stopped it
    from sklearn.metrics import roc_auc_score

    assert roc_auc_score(y[2000:], det.score(X[2000:])) > 0.85
    # Unseen category at scoring time is treated as missing, not an error.
    odd = X[2000:2005].with_columns(pl.lit("never_seen").cast(pl.Categorical).alias("merchant"))
    assert np.isfinite(det.score(odd)).all()


def test_contributions_add_up_to_log_odds() -> None:
    X, y = _frame(1500)
    det = LightGBMDetector(n_estimators=50).fit(X, y)
    contrib = det.explain(X[:50])
    raw = det.booster_.predict(det.encoder_.lgb_matrix(X[:50]), num_iteration=det.best_iteration_, raw_score=True)
    bias = det.booster_.predict(det.encoder_.lgb_matrix(X[:50]), num_iteration=det.best_iteration_,
                                pred_contrib=True)[:, -1]
    np.testing.assert_allclose(contrib.to_numpy().sum(axis=1) + bias, raw, rtol=1e-6, atol=1e-8)
    assert list(det.feature_importance())[0] == "merchant"


def test_needs_both_classes_and_labels() -> None:
    X, _ = _frame(200)
    with pytest.raises(DataError, match="unsupervised detector"):
        LightGBMDetector().fit(X, np.zeros(200))
    with pytest.raises(ValidationFailed, match="needs labels"):
        LightGBMDetector().fit(X)
    with pytest.raises(ValidationFailed, match="labels for"):
        LightGBMDetector().fit(X, np.zeros(10))


@pytest.mark.parametrize("rows", [1, 5, 40])  # row-by-row encoding (service) and vectorised encoding agree
def test_score_and_explain_in_one_pass_matches_score(rows: int) -> None:
    X, y = _frame(1500)
    det = LightGBMDetector(n_estimators=50).fit(X[:1000], y[:1000])
    part = X[1000:1000 + rows]
    scores, contrib = det.score_and_explain(part)
    np.testing.assert_allclose(scores, det.score(part), rtol=1e-9, atol=1e-12)
    assert contrib.columns == det.feature_names_ and contrib.height == rows
    # small frames take the row-by-row path: same matrix as the vectorised one
    big = det.encoder_.lgb_matrix(X[1000:1100])
    np.testing.assert_array_equal(np.isnan(det.encoder_.lgb_matrix(part)), np.isnan(big[:rows]))
    np.testing.assert_allclose(np.nan_to_num(det.encoder_.lgb_matrix(part)), np.nan_to_num(big[:rows]))


def test_seed_bag_round_trips_and_explains(tmp_path) -> None:
    from shopguard.models import load_detector

    X, y = _frame(1500)
    det = LightGBMDetector(n_estimators=40, n_seeds=3).fit(X[:1000], y[:1000])
    part = X[1000:1200]
    scores, contrib = det.score_and_explain(part)
    np.testing.assert_allclose(scores, det.score(part), rtol=1e-9, atol=1e-12)
    assert contrib.shape == (200, len(det.feature_names_))
    single = LightGBMDetector(n_estimators=40).fit(X[:1000], y[:1000])
    assert not np.allclose(det.score(part), single.score(part))  # the bag really averages several models
    loaded = load_detector(det.save(tmp_path / "bag"))
    np.testing.assert_array_equal(loaded.score(part), det.score(part))
