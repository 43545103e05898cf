"""Bootstrap intervals: each replicate is a stratified resample, intervals cover the point estimate,
narrow with more data, and ``summary`` carries them cheaply (subsampled above a size)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from shopguard.errors import ValidationFailed
from shopguard.evaluation import metrics as M


def _case(seed: int, n: int, rate: float = 0.05, ties: bool = False) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < rate).astype(int)
    s = rng.normal(size=n) + 1.5 * y
    return y, (np.round(s, 1) if ties else s)


@pytest.mark.parametrize("ties", [False, True])
def test_replicates_equal_the_metrics_of_explicit_stratified_resamples(ties: bool) -> None:
    y, s = _case(0, 600, ties=ties)
    got = M._boot_values(y, s, 4, np.random.default_rng(7))
    # Replay the same draws: positives then negatives, in the order of the descending-score sort.
    rng = np.random.default_rng(7)
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    pos, neg = np.flatnonzero(ys == 1), np.flatnonzero(ys == 0)
    dp, dn = rng.integers(0, pos.size, (4, pos.size)), rng.integers(0, neg.size, (4, neg.size))
    for i in range(4):
        rows = np.r_[pos[dp[i]], neg[dn[i]]]
        assert ys[rows].sum() == y.sum()  # stratified: the class balance is kept
        assert got["roc_auc"][i] == pytest.approx(skm.roc_auc_score(ys[rows], ss[rows]), abs=1e-12)
        assert got["average_precision"][i] == pytest.approx(skm.average_precision_score(ys[rows], ss[rows]),
                                                            abs=1e-12)


def test_interval_covers_the_estimate_narrows_with_data_and_is_seeded() -> None:
    small, large = _case(1, 400), _case(1, 8000)
    for metric, fn in (("roc_auc", M.roc_auc), ("average_precision", M.average_precision)):
        lo, hi = M.bootstrap_ci(*small, metric=metric)
        assert lo < fn(*small) < hi
        lo2, hi2 = M.bootstrap_ci(*large, metric=metric)
        assert hi2 - lo2 < (hi - lo) / 2
        assert M.bootstrap_ci(*small, metric=metric, seed=3) == M.bootstrap_ci(*small, metric=metric, seed=3)
        lo90, hi90 = M.bootstrap_ci(*small, metric=metric, level=0.9)
        assert lo <= lo90 and hi90 <= hi


def test_missing_class_gives_nan_and_bad_arguments_are_named() -> None:
    assert all(np.isnan(M.bootstrap_ci(np.zeros(50), np.arange(50.0))))
    assert all(np.isnan(M.bootstrap_ci(np.ones(50), np.arange(50.0), metric="average_precision")))
    with pytest.raises(ValidationFailed, match="metric"):
        M.bootstrap_ci([0, 1], [0.1, 0.2], metric="f1")
    with pytest.raises(ValidationFailed, match="level"):
        M.bootstrap_ci([0, 1], [0.1, 0.2], level=1.5)


def test_summary_carries_intervals(monkeypatch: pytest.MonkeyPatch) -> None:
    y, s = _case(2, 3000)
    out = M.summary(y, s)
    for k in ("roc_auc", "average_precision"):
        lo, hi = out[f"{k}_ci"]
        assert lo < out[k] < hi
    assert "roc_auc_ci" not in M.summary(y, s, n_boot=0)
    assert M.summary(np.zeros(20, dtype=int), np.arange(20.0))["roc_auc_ci"] == [pytest.approx(np.nan, nan_ok=True)] * 2
    # Above the size limit: a stratified subsample, the interval narrowed to the full window and centred on it.
    monkeypatch.setattr(M, "CI_MAX_EVENTS", 1000)
    sub = M.summary(y, s)
    for k in ("roc_auc", "average_precision"):
        lo, hi = sub[f"{k}_ci"]
        assert lo < sub[k] < hi
        full_w = out[f"{k}_ci"][1] - out[f"{k}_ci"][0]
        assert 0.4 * full_w < hi - lo < 2.0 * full_w
