"""The analyst's warnings: each check fires on the case it names and stays quiet otherwise."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from shopguard.evaluation import checks as C
from shopguard.evaluation import metrics as M


def codes(found: list[C.Check]) -> list[str]:
    return [c.code for c in found]


def test_few_positives_tiny_window_and_auc_below_chance() -> None:
    assert codes(C.check_few_positives(12)) == ["few_positives"]
    assert C.check_few_positives(30) == [] and C.check_few_positives(None) == []
    assert codes(C.check_tiny_window(99)) == ["tiny_window"] and C.check_tiny_window(100) == []
    (c,) = C.check_auc_below_chance(0.31, window="validation")
    assert c.severity == "warning" and c.window == "validation" and "inverted" in c.message and c.value == 0.31
    assert C.check_auc_below_chance(0.5) == [] and C.check_auc_below_chance(float("nan")) == []


@pytest.mark.parametrize(("train", "test", "fires"), [
    (0.01, 0.012, False), (0.01, 0.039, False), (0.01, 0.05, True), (0.01, 0.002, True), (0.0, 0.01, True),
    (0.0, 0.0, False), (None, 0.3, False),
])
def test_positive_rate_shift(train: float | None, test: float, fires: bool) -> None:
    found = C.check_positive_rate_shift(train, test)
    assert codes(found) == (["positive_rate_shift"] if fires else [])


def _train(n: int = 2000, seed: int = 0) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.05).astype(int)
    X = pl.DataFrame({
        "amount": rng.normal(size=n) + 1.0 * y,          # informative, not separating
        "hour": rng.integers(0, 24, n),
        "chargeback_flag": np.where(y == 1, rng.uniform(5, 9, n), rng.uniform(0, 1, n)),  # leak
        "reverse": np.where(y == 1, -1.0, rng.uniform(0, 1, n)),  # leak, other direction
        "channel": rng.choice(["web", "app"], n).tolist(),
        "merchant": np.where(y == 1, "m_fraud", rng.choice(["m1", "m2", "m3"], n)).tolist(),  # categorical leak
        "user": [f"u{i}" for i in range(n)],  # unique ids: pure categories that prove nothing
    })
    return X, y


def test_label_leak_names_the_separating_features() -> None:
    X, y = _train()
    found = C.check_label_leak(X, y, categorical=["channel", "merchant", "user"])
    named = sorted(c.value["feature"] for c in found)
    assert named == ["chargeback_flag", "merchant", "reverse"]
    assert all(c.window == "train" and "label leak" in c.message for c in found)
    sep = C.feature_separation(X, y, categorical=["channel", "merchant", "user"])
    assert sep["amount"] < 0.9 and sep["user"] < 0.9 and sep["channel"] < 0.6


def test_label_leak_through_missing_values_and_sampling() -> None:
    X, y = _train(3000, seed=1)
    X = X.with_columns(pl.Series("refund_note_len", np.where(y == 1, np.nan, 3.0)))
    found = C.check_label_leak(X.select("amount", "refund_note_len"), y, max_rows=1000)
    assert [c.value["feature"] for c in found] == ["refund_note_len"]
    # Too few positives: separation is likely chance, stay quiet.
    y_few = np.zeros_like(y)
    y_few[:5] = 1
    assert C.check_label_leak(X.select("chargeback_flag"), y_few) == []


def test_run_checks_gathers_and_serialises() -> None:
    X, y = _train()
    rng = np.random.default_rng(3)
    y_test = (rng.random(80) < 0.3).astype(int)
    test = M.summary(y_test, -y_test + rng.normal(size=80) * 0.1, n_boot=0)  # inverted and tiny
    val = M.summary(y[:500], X["amount"].to_numpy()[:500], n_boot=0)
    found = C.run_checks(X_train=X.select("amount", "chargeback_flag"), y_train=y, validation=val, test=test)
    got = {(c.code, c.window) for c in found}
    assert {("label_leak", "train"), ("tiny_window", "test"), ("few_positives", "test"),
            ("auc_below_chance", "test"), ("positive_rate_shift", "test"), ("few_positives", "validation")} <= got
    assert ("auc_below_chance", "validation") not in got
    d = found[0].to_dict()
    assert set(d) == {"code", "severity", "message", "value", "window"}
    assert C.Check.from_dict(d) == found[0]
    assert C.Check("x", "info", "m", float("nan")).to_dict()["value"] is None
    # A healthy window says nothing.
    ok = M.summary(*_healthy(), n_boot=0)
    assert C.run_checks(validation=ok, test=ok, train_positive_rate=0.05) == []


def _healthy() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(4)
    y = (rng.random(2000) < 0.05).astype(int)
    return y, rng.normal(size=2000) + 2 * y


@pytest.mark.parametrize("seed", range(3))
def test_separation_of_numbers_with_missing_values_matches_sklearn(seed: int) -> None:
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(seed)
    y = (rng.random(300) < 0.2).astype(int)
    v = np.round(rng.normal(size=300) + y, 1)
    v[rng.random(300) < 0.3 + 0.3 * y] = np.nan
    got = C.feature_separation(pl.DataFrame({"v": v}), y)["v"]
    want = max(max(a, 1 - a) for a in (roc_auc_score(y, np.nan_to_num(v, nan=-99.0)),
                                        roc_auc_score(y, np.nan_to_num(v, nan=99.0))))
    assert got == pytest.approx(want, abs=1e-12)
