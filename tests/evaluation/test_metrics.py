"""Metric functions against scikit-learn and against hand-computed Handbook examples."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn import metrics as skm

from shopguard.errors import ValidationFailed
from shopguard.evaluation import metrics as M


def _case(seed: int, n: int = 500, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(int)
    y[0], y[1] = 0, 1
    s = rng.normal(size=n) + 1.5 * y
    if ties:
        s = np.round(s, 1)
    return y, s


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_roc_auc_and_ap_match_sklearn(seed: int, ties: bool) -> None:
    y, s = _case(seed, ties=ties)
    assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
    assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)


@given(st.lists(st.tuples(st.integers(0, 1), st.integers(-5, 5)), min_size=2, max_size=60))
@settings(max_examples=60, deadline=None)
def test_property_against_sklearn(pairs: list[tuple[int, int]]) -> None:
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs], dtype=float)
    if 0 < y.sum() < y.size:
        assert M.roc_auc(y, s) == pytest.approx(skm.roc_auc_score(y, s), abs=1e-12)
        assert M.average_precision(y, s) == pytest.approx(skm.average_precision_score(y, s), abs=1e-12)
        fpr, tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
        want = tpr[fpr <= 0.2 + 1e-12].max()
        assert M.recall_at_fpr(y, s, 0.2) == pytest.approx(want)


@pytest.mark.parametrize("seed", range(3))
def test_roc_curve_matches_sklearn(seed: int) -> None:
    y, s = _case(seed, ties=True)
    fpr, tpr, thr = M.roc_curve(y, s)
    sf, st_, sthr = skm.roc_curve(y, s, drop_intermediate=False)
    np.testing.assert_allclose(fpr, sf)
    np.testing.assert_allclose(tpr, st_)
    np.testing.assert_allclose(thr[1:], sthr[1:])


def test_recall_at_fpr_and_threshold_agree() -> None:
    y, s = _case(7, n=3000)
    t = M.threshold_at_fpr(s[y == 0], 0.01)
    c = M.confusion_at(y, s, t)
    assert c["fp"] / (c["fp"] + c["tn"]) <= 0.01
    assert c["tp"] / (c["tp"] + c["fn"]) == pytest.approx(M.recall_at_fpr(y, s, 0.01))
    assert sum(c.values()) == y.size


def test_confusion_matches_sklearn() -> None:
    y, s = _case(3)
    c = M.confusion_at(y, s, 0.8)
    tn, fp, fn, tp = skm.confusion_matrix(y, (s >= 0.8).astype(int)).ravel()
    assert (c["tn"], c["fp"], c["fn"], c["tp"]) == (tn, fp, fn, tp)


def test_precision_at_k_per_day() -> None:
    days = ["d1"] * 4 + ["d2"] * 3
    y = [1, 0, 1, 0, 0, 0, 1]
    s = [0.9, 0.8, 0.1, 0.7, 0.5, 0.4, 0.3]
    # d1 top-2: 0.9 (fraud), 0.8 -> 1/2; d2 top-2: 0.5, 0.4 -> 0/2
    assert M.precision_at_k_per_day(days, y, s, k=2) == pytest.approx(0.25)


def test_card_precision_handbook_example() -> None:
    # Day 1: card A (fraud, max 0.9), B (0.8), C (fraud, 0.2); top-2 = A, B -> 1/2; A is then detected.
    # Day 2: A again (fraud) is removed; D (fraud, 0.7), E (0.6) -> top-2 = D, E -> 1/2.
    days = [1, 1, 1, 1, 2, 2, 2]
    cards = ["A", "A", "B", "C", "A", "D", "E"]
    y = [1, 0, 0, 1, 1, 1, 0]
    s = [0.9, 0.1, 0.8, 0.2, 0.99, 0.7, 0.6]
    assert M.card_precision_at_k(days, cards, y, s, k=2) == pytest.approx(0.5)
    # Without removal, day 2 top-2 = A (0.99, fraud), D -> 2/2.
    assert M.card_precision_at_k(days, cards, y, s, k=2, remove_detected=False) == pytest.approx(0.75)


def test_scenario_recall_and_summary() -> None:
    y = np.array([1, 1, 1, 0, 0, 0])
    s = np.array([0.9, 0.2, 0.8, 0.1, 0.3, 0.05])
    sc = ["a", "a", "b", None, None, None]
    r = M.scenario_recall(sc, y, s, 0.5)
    assert r["a"] == {"positives": 1 + 1, "detected": 1, "recall": 0.5}
    assert r["b"]["recall"] == 1.0
    out = M.summary(y, s, days=[1] * 6, entities=list("uvwxyz"), scenarios=sc, threshold=0.5, k=2)
    assert out["confusion"] == {"tp": 2, "fp": 0, "fn": 1, "tn": 3}
    assert set(out["scenarios"]) == {"a", "b"}
    assert out["roc_auc"] == pytest.approx(skm.roc_auc_score(y, s))


def test_bad_inputs_are_named() -> None:
    with pytest.raises(ValidationFailed, match="differ in length"):
        M.roc_auc([0, 1], [0.1])
    with pytest.raises(ValidationFailed, match="finite"):
        M.roc_auc([0, 1], [0.1, float("nan")])
    with pytest.raises(ValidationFailed, match="0 or 1"):
        M.average_precision([0, 2], [0.1, 0.2])
    assert np.isnan(M.roc_auc([1, 1], [0.1, 0.2]))
