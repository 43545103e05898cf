"""Model directories: round trip, decisions with reasons, refusal of corrupted or incompatible dirs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from shopguard.decision import Policy
from shopguard.errors import ModelError, ValidationFailed
from shopguard.features import FeatureSet
from shopguard.models import LightGBMDetector
from shopguard.models.bundle import ModelBundle
from shopguard.models.calibration import Calibrator


@pytest.fixture(scope="module")
def frame() -> tuple[pl.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 1500
    y = (rng.random(n) < 0.06).astype(int)
    df = pl.DataFrame({
        "event_id": [f"e{i}" for i in range(n)],
        "amount": rng.lognormal(3, 0.5, n) * np.where(y == 1, 8, 1),
        "card_failed_payments_10m": rng.poisson(np.where(y == 1, 6, 0.1)).astype(float),
        "hour": rng.integers(0, 24, n).astype(float),
    })
    return df, y


@pytest.fixture(scope="module")
def bundle(frame: tuple[pl.DataFrame, np.ndarray]) -> ModelBundle:
    df, y = frame
    cols = ["amount", "card_failed_payments_10m", "hour"]
    det = LightGBMDetector(n_estimators=60, features=cols).fit(df[:1000], y[:1000])
    s = det.score(df[1000:])
    cal = Calibrator().fit(s, y[1000:])
    pol = Policy.choose(cal.transform(s), y[1000:], target_fpr=0.01)
    return ModelBundle(detector=det, calibrator=cal, policy=pol, feature_set=FeatureSet(), columns=cols,
                       split={"train_start": "2024-01-01T00:00:00", "train_end": "2024-01-08T00:00:00"},
                       metrics={"test": {"roc_auc": 0.99, "nan": float("nan")}})


def test_round_trip_and_decide(bundle: ModelBundle, frame: tuple[pl.DataFrame, np.ndarray], tmp_path: Path) -> None:
    df, _ = frame
    bundle.save(tmp_path / "m")
    manifest = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert manifest["detector"] == "lightgbm" and manifest["feature_set_version"] == FeatureSet().version
    assert manifest["metrics"]["test"]["nan"] is None  # strict JSON
    assert {"detector/detector.json", "calibrator.json", "policy.json"} <= set(manifest["files"])
    loaded = ModelBundle.load(tmp_path / "m")
    np.testing.assert_array_equal(loaded.score(df), bundle.score(df))
    assert loaded.model_version == bundle.model_version and loaded.policy == bundle.policy
    decisions = loaded.decide(df[:200])
    assert len(decisions) == 200 and decisions[0].event_id == "e0"
    worst = max(decisions, key=lambda d: d.probability)
    assert worst.action.value in ("challenge", "block")
    assert worst.reasons and "failed payments in 10 min on this card" in " ".join(r.text for r in worst.reasons)
    assert all(0.0 <= d.probability <= 1.0 for d in decisions)


def test_refuses_corrupted_or_foreign_dirs(bundle: ModelBundle, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a shopguard model directory"):
        ModelBundle.load(tmp_path / "nothing")
    d = bundle.save(tmp_path / "m2")
    (d / "policy.json").write_text((d / "policy.json").read_text().replace("0", "1", 1))
    with pytest.raises(ModelError, match="checksum"):
        ModelBundle.load(d)
    d = bundle.save(tmp_path / "m3")
    (d / "calibrator.json").unlink()
    with pytest.raises(ModelError, match="missing"):
        ModelBundle.load(d)
    d = bundle.save(tmp_path / "m4")
    m = json.loads((d / "manifest.json").read_text())
    m["format_version"] = 99
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="newer"):
        ModelBundle.load(d)
    d = bundle.save(tmp_path / "m5")
    m = json.loads((d / "manifest.json").read_text())
    m["feature_set"]["definitions"][0]["window"] = "forever"
    (d / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(ModelError, match="feature set"):
        ModelBundle.load(d)


def test_missing_columns_named(bundle: ModelBundle, frame: tuple[pl.DataFrame, np.ndarray]) -> None:
    df, _ = frame
    with pytest.raises(ModelError, match="card_failed_payments_10m"):
        bundle.score(df.drop("card_failed_payments_10m"))
    with pytest.raises(ModelError, match="event_id"):
        bundle.decide(df.drop("event_id"))


def test_explain_flagged_gives_same_decisions_and_reasons_only_where_acted_on(
    bundle: ModelBundle, frame: tuple[pl.DataFrame, np.ndarray]
) -> None:
    df, _ = frame
    full = bundle.decide(df[:300], explain="all")
    lean = bundle.decide(df[:300], explain="flagged")
    np.testing.assert_allclose([d.probability for d in full], [d.probability for d in lean], rtol=1e-6)
    assert [d.action for d in full] == [d.action for d in lean]
    for a, b in zip(full, lean, strict=True):
        assert b.reasons == (a.reasons if b.action != "allow" else [])
    with pytest.raises(ValidationFailed, match="explain"):
        bundle.decide(df[:2], explain="some")
