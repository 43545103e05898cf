"""Fusion fine-tuning: sequence + engineered features in one head, the exact linear probe, few labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score

from shopguard.errors import DataError
from shopguard.models.base import load_detector
from shopguard.models.sequence.config import FinetuneConfig, fusion_config
from shopguard.models.sequence.finetune import FineTunedModel, finetune
from shopguard.models.sequence.fusion import FusionClassifierDetector, FusionFeatures, FusionInput
from shopguard.models.sequence.network import FoundationModel

from .conftest import make_log, tabular


@pytest.fixture(scope="module")
def data(toy_log: pl.DataFrame) -> dict:
    test = make_log(n_users=15, seed=11, takeover_frac=0.4)
    return {"train": toy_log, "test": test, "ftr": tabular(toy_log).join(toy_log.select("event_id", "label"),
                                                                         on="event_id", maintain_order="left"),
            "fte": tabular(test).join(test.select("event_id", "label"), on="event_id", maintain_order="left")}


def test_fusion_features_are_finite_standardised_and_roundtrip(data: dict) -> None:
    ff = FusionFeatures().fit(data["ftr"])
    assert "label" not in ff.columns and "event_id" not in ff.columns  # labels never become inputs
    z = ff.transform(data["ftr"])
    assert z.shape == (data["ftr"].height, len(ff.columns)) and np.isfinite(z).all()
    assert np.abs(z.mean(axis=0)).max() < 0.5 and np.abs(z).max() <= 5.0
    again = FusionFeatures.from_dict(ff.to_dict())
    np.testing.assert_allclose(again.transform(data["fte"]), ff.transform(data["fte"]))
    with pytest.raises(DataError, match="since_prev_s"):
        ff.transform(data["fte"].drop("since_prev_s"))


def test_linear_probe_equals_logistic_regression(pretrained: FoundationModel, data: dict) -> None:
    """The frozen + probe head is scikit-learn's L2 logistic regression on [standardised h, features]."""
    train, ftr = data["train"], data["ftr"]
    b = pretrained.build(train, ftr["event_id"])
    x = FusionFeatures().fit(ftr).transform(ftr)
    y = ftr["label"].to_numpy()
    res = finetune(pretrained, b, y, config=fusion_config("frozen", head_c=0.5), extra=x)
    h = pretrained.embeddings(b)
    z = np.hstack([(h - h.mean(0)) / h.std(0, ddof=1).clip(1e-4), x])
    lr = LogisticRegression(C=0.5, class_weight="balanced", max_iter=5000, tol=1e-8).fit(z, y)
    ours = res.model.predict_proba(b, x)
    np.testing.assert_allclose(ours, lr.predict_proba(z)[:, 1], atol=2e-3)
    assert res.trainable_params < 200 and res.history[0]["epoch"] == 0


@pytest.mark.parametrize("method", ["frozen", "full", "lora"])
def test_fusion_finetuning_with_few_labels(pretrained: FoundationModel, data: dict, method: str) -> None:
    """Five positives are enough to find a planted takeover once the features are fused in."""
    train, ftr, fte = data["train"], data["ftr"], data["fte"]
    y = ftr["label"].to_numpy()
    pos = np.flatnonzero(y == 1)[:5]
    keep = np.sort(np.concatenate([pos, np.flatnonzero(y == 0)[::4]]))
    ff = FusionFeatures().fit(ftr)  # every training row: no label read
    b = pretrained.build(train, ftr["event_id"])
    res = finetune(pretrained, b.subset(keep), y[keep], config=fusion_config(method, epochs=2, lr=3e-3),
                   extra=ff.transform(ftr)[keep], unlabeled=b)
    p = res.model.predict_proba(res.model.build(data["test"], fte["event_id"]), ff.transform(fte))
    assert average_precision_score(fte["label"].to_numpy(), p) > 0.8, method
    assert res.model.n_extra == len(ff.columns)


def test_aux_loss_and_refit_and_errors(pretrained: FoundationModel, data: dict, tmp_path: Path) -> None:
    train, ftr = data["train"], data["ftr"]
    b = pretrained.build(train, ftr["event_id"])
    x = FusionFeatures().fit(ftr).transform(ftr)
    y = ftr["label"].to_numpy()
    cfg = FinetuneConfig(method="full", epochs=2, head_hidden=16, aux_weight=0.5, refit=True, max_negatives=200)
    res = finetune(pretrained, b, y, config=cfg, extra=x)
    assert res.model.finetune["best_epoch"] >= 1 and res.model.finetune["n_extra"] == x.shape[1]
    res.model.save(tmp_path / "ft")
    again = FineTunedModel.load(tmp_path / "ft")
    np.testing.assert_allclose(again.predict_proba(b, x), res.model.predict_proba(b, x), rtol=1e-5)
    with pytest.raises(DataError, match="extra"):
        res.model.predict_proba(b)
    with pytest.raises(DataError, match="NaN"):
        finetune(pretrained, b, y, config=cfg, extra=np.full_like(x, np.nan))
    with pytest.raises(DataError, match="shape"):
        finetune(pretrained, b, y, config=cfg, extra=x[:10])


def test_fusion_detector_contract(pretrained_dir: Path, data: dict, tmp_path: Path) -> None:
    train, ftr, fte = data["train"], data["ftr"], data["fte"]
    y = ftr["label"].to_numpy().copy()
    y[np.random.default_rng(0).random(len(y)) < 0.5] = -1  # half the rows unlabelled
    det = FusionClassifierDetector(pretrained=str(pretrained_dir), method="frozen").fit(FusionInput(train, ftr), y)
    s = det.score(FusionInput(data["test"], fte))
    assert s.shape == (fte.height,) and average_precision_score(fte["label"].to_numpy(), s) > 0.8
    det.save(tmp_path / "fusion")
    again = load_detector(tmp_path / "fusion")
    np.testing.assert_allclose(again.score(FusionInput(data["test"], fte.head(7))), s[:7], rtol=1e-5)
    with pytest.raises(DataError, match="needs labels"):
        FusionClassifierDetector(pretrained=str(pretrained_dir)).fit(FusionInput(train, ftr))
    with pytest.raises(DataError, match="1, 0 or -1"):
        FusionClassifierDetector(pretrained=str(pretrained_dir)).fit(FusionInput(train, ftr), np.full(ftr.height, 2))
    with pytest.raises(DataError, match="FusionInput"):
        det.score(train)


def test_fusion_config_defaults_and_overrides() -> None:
    cfg = fusion_config("lora", epochs=5)
    assert (cfg.method, cfg.epochs, cfg.head_hidden, cfg.probe) == ("lora", 5, 0, True)
    with pytest.raises(ValueError, match="method"):
        fusion_config("bogus")
    # CPU-sized plain defaults: a few epochs, negatives subsampled per epoch.
    plain = FinetuneConfig()
    assert plain.epochs <= 4 and plain.max_negatives is not None and not plain.probe
