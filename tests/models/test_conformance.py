"""One conformance suite run over every tabular detector in ``DETECTORS`` (after River's and sklearn's)."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import roc_auc_score

from shopguard.errors import ModelError, ShopguardError
from shopguard.models import DETECTORS, Detector, load_detector


def planted_frame(seed: int = 0, users: int = 60, per_user: int = 40, rate: float = 0.04) -> pl.DataFrame:
    """Users with their own habits (amount level, active hours, usual merchants); anomalies leave them."""
    rng = np.random.default_rng(seed)
    rows = []
    start = datetime(2024, 1, 1)
    for u in range(users):
        level = rng.lognormal(3.0, 0.6)
        hour0 = rng.integers(8, 20)
        for i in range(per_user):
            bad = rng.random() < rate
            amount = level * rng.lognormal(0, 0.2) * (rng.uniform(6, 12) if bad else 1.0)
            hour = (hour0 + rng.normal(0, 1.0) + (12 if bad else 0)) % 24
            rows.append({
                "event_id": f"e{u}_{i}",
                "ts": start + timedelta(hours=float(rng.uniform(0, 24 * 30))),
                "user_id": f"u{u}",
                "amount": float(amount),
                "hour": float(hour),
                "user_pay_1h": float(rng.poisson(6 if bad else 0.3)),
                "new_device": float(rng.random() < (0.7 if bad else 0.03)),
                "merchant": f"m{rng.integers(0, 5)}" if not bad else f"m{rng.integers(3, 8)}",
                "label": int(bad),
            })
    return pl.DataFrame(rows).sort("ts")


@pytest.fixture(scope="module")
def data() -> tuple[pl.DataFrame, pl.DataFrame]:
    df = planted_frame()
    cut = int(df.height * 0.7)
    return df[:cut], df[cut:]


def _X(df: pl.DataFrame) -> pl.DataFrame:
    return df.drop("label")


@pytest.fixture(scope="module", params=sorted(DETECTORS))
def fitted(request: pytest.FixtureRequest, data: tuple[pl.DataFrame, pl.DataFrame]) -> Detector:
    train, _ = data
    det = DETECTORS[request.param]()
    out = det.fit(_X(train), train["label"].to_numpy() if det.supervised else None)
    assert out is det, "fit must return self"
    return det


def test_registry_names_match() -> None:
    assert {"lightgbm", "iforest", "ecod", "hbos", "baseline"} <= set(DETECTORS)
    for name, cls in DETECTORS.items():
        assert cls.name == name


def test_score_shape_finite_and_quality(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, test = data
    s = fitted.score(_X(test))
    assert s.shape == (test.height,)
    assert s.dtype == np.float64 and np.isfinite(s).all()
    auc = roc_auc_score(test["label"].to_numpy(), s)
    assert auc > 0.8, f"{fitted.name}: higher must mean riskier (ROC-AUC {auc:.3f})"


def test_score_does_not_mutate_and_is_row_independent(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, test = data
    X = _X(test)
    before = {k: v for k, v in vars(fitted).items()}
    s1 = fitted.score(X)
    s2 = fitted.score(X)
    np.testing.assert_array_equal(s1, s2)
    assert set(vars(fitted)) == set(before)
    # A row's score does not depend on which other rows share its batch.
    np.testing.assert_allclose(fitted.score(X[:7]), s1[:7], rtol=1e-9, atol=1e-12)


def test_save_load_round_trip(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame], tmp_path: Path) -> None:
    _, test = data
    fitted.save(tmp_path / "det", metadata={"feature_version": "t"})
    loaded = load_detector(tmp_path / "det")
    assert type(loaded) is type(fitted)
    np.testing.assert_array_equal(loaded.score(_X(test)), fitted.score(_X(test)))
    assert loaded.metadata_["feature_version"] == "t"  # type: ignore[attr-defined]


def test_clone_from_params(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    train, test = data
    clone = type(fitted)(**fitted.get_params())
    assert not clone.is_fitted
    clone.fit(_X(train), train["label"].to_numpy() if clone.supervised else None)
    np.testing.assert_allclose(clone.score(_X(test)), fitted.score(_X(test)), rtol=1e-9)


def test_unfitted_score_raises(data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, test = data
    for cls in DETECTORS.values():
        with pytest.raises(ModelError, match="not fitted"):
            cls().score(_X(test))


def test_missing_feature_column_is_named(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, test = data
    with pytest.raises(ModelError, match="amount"):
        fitted.score(_X(test).drop("amount"))


def test_explain_rows_by_features(fitted: Detector, data: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    _, test = data
    contrib = fitted.explain(_X(test)[:20])
    assert isinstance(contrib, pl.DataFrame)
    assert contrib.height == 20 and "amount" in contrib.columns
    assert np.isfinite(contrib.to_numpy()).all()


def test_bad_input_type_is_clear() -> None:
    for cls in DETECTORS.values():
        with pytest.raises(ShopguardError):
            cls().fit([1, 2, 3])
