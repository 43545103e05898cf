"""``tune_lightgbm``: a time-ordered slice cut from the end of the rows it is given, a budget, a seed."""

from __future__ import annotations

import time
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import pytest

from shopguard.evaluation.metrics import roc_auc
from shopguard.models.gbm import LightGBMDetector
from shopguard.models.tuning import TuneResult, feature_groups_from_names, tune_lightgbm

FEATURES = ["amount", "hour", "channel", "user_tx_1d", "user_new_device", "user_ring_size", "ip_users_1h",
            "merchant_risk_7d"]


def shop(n: int = 2400, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    """Events a minute apart; fraud grows more common and shifts its signature over time."""
    rng = np.random.default_rng(seed)
    trend = np.arange(n) / n
    y = (rng.random(n) < 0.03 + 0.05 * trend).astype(int)
    X = pl.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "ts": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(n)],
        "amount": rng.normal(size=n) + 1.5 * y * trend,
        "hour": rng.integers(0, 24, n),
        "channel": rng.choice(["web", "app", "api"], n).tolist(),
        "user_tx_1d": rng.poisson(3, n) + 2 * y,
        "user_new_device": (rng.random(n) < 0.1 + 0.5 * y).astype(int),
        "user_ring_size": rng.poisson(1, n) + y * (rng.random(n) < 0.3),
        "ip_users_1h": rng.normal(size=n),
        "merchant_risk_7d": rng.normal(size=n) + 0.7 * y,
    })
    return X, y


def tune(X: pl.DataFrame, y: np.ndarray, **kw: object) -> TuneResult:
    args: dict = {"features": FEATURES, "categorical": ["channel"], "budget_s": 30.0, "max_trials": 6,
                  "min_positives": 10} | kw
    return tune_lightgbm(X, y, **args)


def test_validation_slice_is_the_end_of_the_given_rows_only() -> None:
    full, y_full = shop(3000)
    # The caller's test window (last 1000 rows) is not passed; rows are shuffled: order comes from ts.
    X, y = full.head(2000), y_full[:2000]
    perm = np.random.default_rng(1).permutation(X.height)
    before = X.clone()
    r = tune(X[perm], y[perm], validation_fraction=0.25)
    assert X.equals(before)
    v = r.validation
    assert (v["fit_rows"], v["rows"]) == (1500, 500)
    assert v["start"] == X["ts"][1500].isoformat() and v["end"] == X["ts"].max().isoformat()
    assert v["end"] < full["ts"][2000].isoformat()
    assert v["positives"] == int(y[1500:].sum())
    # The same rows in time order choose the same settings.
    r2 = tune(X, y, validation_fraction=0.25)
    assert r2.tuned_params == r.tuned_params and r2.best_score == r.best_score


def test_deterministic_with_a_seed() -> None:
    X, y = shop()
    a, b = tune(X, y, seed=3), tune(X, y, seed=3)
    assert a.tuned_params == b.tuned_params
    assert (a.best_score, a.default_score, a.n_trials) == (b.best_score, b.default_score, b.n_trials)
    c = tune(X, y, seed=4)
    assert c.tuned_params != a.tuned_params


def test_respects_the_budget() -> None:
    X, y = shop()
    t0 = time.monotonic()
    r = tune(X, y, budget_s=1.5, max_trials=10_000)
    took = time.monotonic() - t0
    assert took < 1.5 + 2.0  # optuna import and one tree's worth of overrun
    assert r.elapsed_s < 1.5 + 1.0
    assert r.n_trials >= 1 and r.n_trials < 10_000


def test_params_fit_the_detector_and_default_score_is_reported() -> None:
    X, y = shop()
    r = tune(X, y, max_trials=10)
    assert np.isfinite(r.default_score) and np.isfinite(r.best_score)
    assert r.improved == (r.best_score > r.default_score)
    assert r.n_trials >= 1
    d = r.to_dict()
    assert d["default_score"] == r.default_score and d["gain"] == pytest.approx(r.best_score - r.default_score)
    for params in (r.params, r.tuned_params):
        det = LightGBMDetector(**params).fit(X, y)
        assert roc_auc(y, det.score(X)) > 0.75
    assert set(r.tuned_params["features"]) <= set(FEATURES) and r.tuned_params["features"]
    assert r.tuned_params["categorical"] == [c for c in ["channel"] if c in r.tuned_params["features"]]
    if not r.improved:
        assert r.params == {"features": [c for c in FEATURES if c != "channel"] + ["channel"],
                            "categorical": ["channel"]}


def test_feature_groups_switch_on_and_off_with_at_least_one_on() -> None:
    X, y = shop()
    groups = {"noise": ["ip_users_1h", "hour"], "signal": ["user_tx_1d", "merchant_risk_7d"]}
    r = tune(X, y, feature_groups=groups, max_trials=12)
    chosen = set(r.tuned_params["features"])
    always = set(FEATURES) - {c for cols in groups.values() for c in cols}
    assert always <= chosen
    on = [g for g, cols in groups.items() if set(cols) <= chosen]
    assert on and all(not (set(cols) & chosen) for g, cols in groups.items() if g not in on)


def test_groups_from_names() -> None:
    g = feature_groups_from_names(["amount", "user_tx_1d", "user_ring_size", "user_linked_accounts", "ring_size",
                                   "device_users_1d", "ip_users_1h", "card_users_7d", "merchant_tx_1d",
                                   "item_reviews_1h", "attr_coupon", "seq_emb_0", "channel"])
    assert g == {"event": ["amount", "channel"], "user": ["user_tx_1d"],
                 "ring": ["user_ring_size", "user_linked_accounts", "ring_size"], "device": ["device_users_1d"],
                 "ip": ["ip_users_1h"], "card": ["card_users_7d"], "merchant": ["merchant_tx_1d"],
                 "item": ["item_reviews_1h"], "attr": ["attr_coupon"], "sequence": ["seq_emb_0"]}


def test_no_fraud_in_the_slice_keeps_the_defaults() -> None:
    X, y = shop(800)
    y = y.copy()
    y[600:] = 0
    r = tune(X, y)
    assert r.n_trials == 0 and not r.improved and r.note
    assert r.params["features"] == [c for c in FEATURES if c != "channel"] + ["channel"]
    LightGBMDetector(**r.params).fit(X, np.r_[y[:600], np.ones(200, dtype=int)])


def test_too_few_frauds_in_the_slice_keep_the_defaults() -> None:
    X, y = shop(2000)
    r = tune(X, y, min_positives=10_000)
    assert not r.improved and r.n_trials == 0 and "too few" in (r.note or "")
    assert set(r.params) == {"features", "categorical"}


def test_large_logs_tune_on_all_frauds_and_a_sample_of_the_rest() -> None:
    X, y = shop(3000)
    r = tune(X, y, max_rows=1200)
    assert r.validation["sampled_rows"] <= 1200 and r.validation["rows"] == 750  # the slice itself is not cut
    assert r.n_trials > 0 and r.params["features"]
