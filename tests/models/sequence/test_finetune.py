from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import average_precision_score

from shopguard.errors import DataError, ModelError
from shopguard.models.base import load_detector
from shopguard.models.sequence.config import FinetuneConfig
from shopguard.models.sequence.detectors import (
    SequenceClassifierDetector,
    SequenceInput,
    SequenceSurpriseDetector,
    sequence_embeddings,
    surprise_features,
)
from shopguard.models.sequence.finetune import FineTunedModel, finetune
from shopguard.models.sequence.network import FoundationModel

from .conftest import make_log


@pytest.fixture(scope="module")
def split(toy_log: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Train on the first 30 users, test on 10 unseen ones (a later, separate log)."""
    test = make_log(n_users=15, seed=11, takeover_frac=0.4)
    return toy_log, test


def _fit(model: FoundationModel, log: pl.DataFrame, method: str, **kw: object):
    b = model.build(log, log["event_id"])
    y = log["label"].to_numpy()
    params = {"method": method, "epochs": 6, "patience": 3, "lr": 3e-3, "seed": 1, **kw}
    return finetune(model, b, y, config=FinetuneConfig(**params))


@pytest.mark.parametrize(("method", "kw", "floor"), [
    ("full", {"epochs": 4}, 0.8),
    ("lora", {"epochs": 4, "lr": 1e-2}, 0.8),
    ("frozen", {"epochs": 15, "lr": 1e-2}, 0.8),  # a head on fixed embeddings: cheap epochs
])
def test_finetuning_separates_planted_pattern(pretrained: FoundationModel, split, method: str, kw: dict,
                                              floor: float) -> None:
    train, test = split
    res = _fit(pretrained, train, method, **kw)
    p = res.model.predict_proba(res.model.build(test, test["event_id"]))
    ap = average_precision_score(test["label"].to_numpy(), p)
    assert ap > floor, method
    assert res.history and 0 < res.trainable_params <= res.total_params


def test_lora_and_frozen_train_fewer_params_than_full(pretrained: FoundationModel, split) -> None:
    train, _ = split
    counts = {m: _fit(pretrained, train, m, epochs=1).trainable_params
              for m in ("full", "lora", "frozen")}
    assert counts["frozen"] < counts["lora"] < counts["full"]


def test_freezing_options_reduce_trainable(pretrained: FoundationModel, split) -> None:
    train, _ = split
    full = _fit(pretrained, train, "full", epochs=1).trainable_params
    part = _fit(pretrained, train, "full", epochs=1, freeze_embeddings=True, freeze_layers=1).trainable_params
    assert part < full


def test_finetuning_leaves_pretrained_untouched_and_roundtrips(pretrained: FoundationModel, split,
                                                               tmp_path: Path) -> None:
    train, test = split
    b = pretrained.build(test, ["u1e10", "u2e12"])
    before = pretrained.surprise(b)
    res = _fit(pretrained, train, "lora", epochs=1)
    np.testing.assert_allclose(pretrained.surprise(b), before)
    res.model.save(tmp_path / "ft")
    again = FineTunedModel.load(tmp_path / "ft")
    np.testing.assert_allclose(again.predict_proba(b), res.model.predict_proba(b), rtol=1e-5)
    assert again.finetune["method"] == "lora"
    pretrained.save(tmp_path / "pre")
    with pytest.raises(ModelError, match="no fine-tuned head"):
        FineTunedModel.load(tmp_path / "pre")


def test_bad_labels_are_clear_errors(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    b = pretrained.build(toy_log, toy_log["event_id"][:50])
    with pytest.raises(DataError, match="labels"):
        finetune(pretrained, b, np.arange(50) % 3)
    with pytest.raises(DataError, match="50 sequences"):
        finetune(pretrained, b, np.zeros(10))


def test_detectors_follow_the_contract(pretrained_dir: Path, split, tmp_path: Path) -> None:
    train, test = split
    det = SequenceClassifierDetector(pretrained=str(pretrained_dir), method="frozen", epochs=4, lr=3e-3)
    det.fit(train, train["label"].to_numpy())
    targets = ["u3e20", "u0e1", "u5e7"]
    s = det.score(SequenceInput(test, targets))
    assert s.shape == (3,) and np.all((s >= 0) & (s <= 1))
    det.save(tmp_path / "clf")
    again = load_detector(tmp_path / "clf")
    np.testing.assert_allclose(again.score(SequenceInput(test, targets)), s, rtol=1e-5)
    with pytest.raises(DataError, match="needs labels"):
        SequenceClassifierDetector(pretrained=str(pretrained_dir)).fit(train)

    sur = SequenceSurpriseDetector(pretrained=str(pretrained_dir)).fit(train)
    whole = sur.score(test)
    assert whole.shape == (test.height,)
    sub = sur.score(SequenceInput(test, targets))
    order = {e: i for i, e in enumerate(test["event_id"])}
    np.testing.assert_allclose(sub, whole[[order[t] for t in targets]], rtol=1e-4, atol=1e-4)
    with pytest.raises(DataError, match="Polars frame"):
        sur.score([1, 2, 3])
    sur.save(tmp_path / "sur")
    np.testing.assert_allclose(load_detector(tmp_path / "sur").score(SequenceInput(test, targets)), sub, atol=1e-4)
    raw = SequenceSurpriseDetector(pretrained=str(pretrained_dir), normalize=False).fit(train)
    assert not np.allclose(raw.score(SequenceInput(test, targets)), sub)


def test_sequence_embeddings_keyed_by_event_id(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    ids = ["u2e3", "u1e0", "u2e3"]
    emb = sequence_embeddings(pretrained, toy_log, ids)
    assert emb["event_id"].to_list() == ids
    assert emb.width == 1 + pretrained.config.d_model
    np.testing.assert_allclose(emb.row(0)[1:], emb.row(2)[1:])


def test_surprise_features_keyed_by_event_id(pretrained: FoundationModel, toy_log: pl.DataFrame) -> None:
    ids = ["u2e3", "u1e0"]
    feats = surprise_features(pretrained, toy_log, ids)
    assert feats["event_id"].to_list() == ids
    parts = feats.drop("event_id", "surprise_total").to_numpy().sum(axis=1)
    np.testing.assert_allclose(parts, feats["surprise_total"].to_numpy(), rtol=1e-4)
    np.testing.assert_allclose(feats["surprise_total"].to_numpy(), pretrained.surprise(pretrained.build(toy_log, ids)),
                               rtol=1e-4)
