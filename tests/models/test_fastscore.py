"""Frame-free single-event scoring: exactly the decisions of ``ModelBundle.decide``, for any row."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest

from shopguard.decision import Policy
from shopguard.features import FeatureSet
from shopguard.models import LightGBMDetector
from shopguard.models.bundle import ModelBundle
from shopguard.models.calibration import Calibrator
from shopguard.models.fastscore import LOOP_ROWS, RowScorer, SingleRowPredictor

NUMERIC = ["amount", "card_failed_payments_10m", "hour", "user_events_1h"]
CATEGORICAL = ["channel", "category"]
COLUMNS = NUMERIC + CATEGORICAL


def _frame(n: int, seed: int) -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.08).astype(int)
    channel = rng.choice(["web", "app", "api", "pos"], n)
    channel = np.where((y == 1) & (rng.random(n) < 0.6), "api", channel)
    amount = rng.lognormal(3, 0.6, n) * np.where(y == 1, 6, 1)
    amount[rng.random(n) < 0.1] = np.nan  # missing values take LightGBM's default direction
    events = rng.poisson(np.where(y == 1, 5, 1)).astype(float)
    events[rng.random(n) < 0.2] = np.nan
    return pl.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "ts": [datetime(2024, 1, 1) + timedelta(minutes=i) for i in range(n)],
        "amount": amount,
        "card_failed_payments_10m": rng.poisson(np.where(y == 1, 4, 0.2)).astype(float),
        "hour": rng.integers(0, 24, n).astype(float),
        "user_events_1h": events,
        "channel": channel,
        "category": rng.choice([f"c{i}" for i in range(12)], n),
    }), y


def _bundle(n_seeds: int, calibration: str) -> ModelBundle:
    df, y = _frame(2500, 3)
    det = LightGBMDetector(n_estimators=60, num_leaves=15, min_child_samples=5, features=COLUMNS,
                           categorical=CATEGORICAL, n_seeds=n_seeds).fit(df[:1800], y[:1800])
    s = det.score(df[1800:])
    cal = Calibrator(method=calibration).fit(s, y[1800:])  # type: ignore[arg-type]
    pol = Policy(medium=0.05, high=0.3, critical=0.8)  # plenty of flagged rows: reasons are compared too
    return ModelBundle(detector=det, calibrator=cal, policy=pol, feature_set=FeatureSet(), columns=COLUMNS)


@pytest.fixture(scope="module", params=[(1, "platt"), (3, "isotonic")], ids=["one-booster", "bag-of-3"])
def bundle(request: pytest.FixtureRequest) -> ModelBundle:
    return _bundle(*request.param)


def _thresholds(det: LightGBMDetector) -> dict[int, list[float]]:
    """Every numeric split threshold per feature: the boundary values rows must be exact on."""
    out: dict[int, list[float]] = {}

    def walk(node: dict[str, Any]) -> None:
        if "split_feature" not in node:
            return
        if node["decision_type"] == "<=":
            out.setdefault(node["split_feature"], []).append(float(node["threshold"]))
        walk(node["left_child"])
        walk(node["right_child"])

    for booster in det._boosters():
        for tree in booster.dump_model()["tree_info"]:
            walk(tree["tree_structure"])
    return out


def _rows(bundle: ModelBundle, n: int, seed: int) -> list[dict[str, Any]]:
    """Awkward rows: split thresholds exactly and next to them, zeros, NaN, None, inf, unseen and None
    categories, booleans and ints where floats are expected."""
    rng = np.random.default_rng(seed)
    det = bundle.detector
    cuts = _thresholds(det)
    names = det.feature_names_
    rows = []
    for i in range(n):
        row: dict[str, Any] = {"event_id": f"r{i}", "ts": datetime(2024, 2, 1), "type": "pay", "user_id": "u1"}
        for j, c in enumerate(NUMERIC):
            t = cuts.get(names.index(c), [1.0])
            pick = rng.integers(10)
            th = float(rng.choice(t))
            row[c] = [th, np.nextafter(th, np.inf), np.nextafter(th, -np.inf), 0.0, None, float("nan"),
                      float("inf"), int(round(th)), bool(rng.integers(2)), float(rng.normal(th, 3))][pick]
            if j == 1 and rng.random() < 0.5:
                row[c] = float(rng.integers(0, 8))  # the strong feature: many rows are flagged
        row["channel"] = rng.choice(["web", "app", "api", "pos", "never-seen", None])  # type: ignore[arg-type]
        row["category"] = rng.choice(["c1", "c5", "c11", "zz", None])  # type: ignore[arg-type]
        rows.append(row)
    return rows


def _same(fast: Any, ref: Any) -> None:
    assert fast.score == pytest.approx(ref.score, rel=1e-12, abs=1e-15)
    assert fast.probability == pytest.approx(ref.probability, rel=1e-12, abs=1e-15)
    assert fast.risk_level == ref.risk_level and fast.action == ref.action
    assert [(r.code, r.text, r.weight) for r in fast.reasons] == [(r.code, r.text, r.weight) for r in ref.reasons]


def test_single_rows_decide_exactly_as_the_bundle(bundle: ModelBundle) -> None:
    scorer = RowScorer.for_bundle(bundle)
    assert scorer is not None
    rows = _rows(bundle, 300, 1)
    flagged = 0
    for row in rows:
        [fast] = scorer.decide([row])  # type: ignore[misc]
        [ref] = bundle.decide(pl.DataFrame([row], infer_schema_length=None), explain="flagged")
        _same(fast, ref)
        flagged += fast.action.value != "allow"
    assert 20 < flagged < 280  # both branches (with and without reasons) were compared


@pytest.mark.parametrize("n", [7, LOOP_ROWS + 9])  # a coalesced pass, and the vectorised path
def test_groups_score_like_one_by_one(bundle: ModelBundle, n: int) -> None:
    scorer = RowScorer.for_bundle(bundle)
    assert scorer is not None
    rows = _rows(bundle, n, 2)
    together = scorer.decide(rows)
    assert together is not None and len(together) == n
    for row, fast in zip(rows, together, strict=True):
        [one] = scorer.decide([row])  # type: ignore[misc]
        _same(fast, one)


def test_tree_evaluation_matches_booster_predict(bundle: ModelBundle) -> None:
    det = bundle.detector
    scorer = RowScorer.for_bundle(bundle)
    assert scorer is not None
    m = det.encoder_.encode_rows(_rows(bundle, 200, 3))
    assert np.isnan(m).any() and (m == 0).any()
    for b in det._boosters():
        raw = SingleRowPredictor(b, m.shape[1], kind="raw", num_iteration=det.best_iteration_)
        contrib = SingleRowPredictor(b, m.shape[1], kind="contrib", num_iteration=det.best_iteration_)
        want_raw = b.predict(m, num_iteration=det.best_iteration_, raw_score=True)
        want_contrib = b.predict(m, num_iteration=det.best_iteration_, pred_contrib=True)
        np.testing.assert_allclose([raw(m[i])[0] for i in range(len(m))], want_raw, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(np.stack([contrib(m[i]) for i in range(len(m))]), want_contrib, rtol=1e-9,
                                   atol=1e-12)
    np.testing.assert_allclose(scorer.scores(m), det.score_matrix(m), rtol=1e-12, atol=1e-15)
    with pytest.raises(ValueError, match="float64 row"):
        raw(m[0, :-1])


def test_encode_rows_equals_the_frame_encoding(bundle: ModelBundle) -> None:
    enc = bundle.detector.encoder_
    rows = _rows(bundle, 60, 4)
    by_rows = enc.encode_rows(rows)
    for i, row in enumerate(rows):  # the frame path of one row (how the service scored before)
        one = enc.lgb_matrix(pl.DataFrame([row], infer_schema_length=None))
        np.testing.assert_array_equal(by_rows[i:i + 1], one)
    with pytest.raises(KeyError):
        enc.encode_rows([{"amount": 1.0}])


def test_rows_lacking_a_column_and_other_models_take_the_frame_path(bundle: ModelBundle) -> None:
    scorer = RowScorer.for_bundle(bundle)
    assert scorer is not None
    row = _rows(bundle, 1, 5)[0]
    del row["hour"]
    assert scorer.decide([row]) is None  # the caller falls back to ModelBundle.decide (which names the column)

    class Tweaked(LightGBMDetector):
        def score(self, X: Any) -> np.ndarray:
            return super().score(X) * 0.5

    tweaked = Tweaked.__new__(Tweaked)
    tweaked.__dict__.update(bundle.detector.__dict__)
    other = ModelBundle(detector=tweaked, calibrator=bundle.calibrator, policy=bundle.policy, columns=COLUMNS)
    assert RowScorer.for_bundle(other) is None  # its own scoring must be kept
    unfitted = ModelBundle(detector=LightGBMDetector(), calibrator=bundle.calibrator, policy=bundle.policy)
    assert RowScorer.for_bundle(unfitted) is None
