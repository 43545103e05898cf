from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from shopguard.models.sequence.config import FinetuneConfig
from shopguard.models.sequence.export import IncrementalScorer, OnnxScorer, export_onnx
from shopguard.models.sequence.finetune import FineTunedModel, finetune
from shopguard.models.sequence.network import FoundationModel


@pytest.fixture(scope="module")
def classifier(pretrained_dir: Path, toy_log: pl.DataFrame) -> FineTunedModel:
    model = FoundationModel.load(pretrained_dir)
    b = model.build(toy_log, toy_log["event_id"])
    return finetune(model, b, toy_log["label"].to_numpy(), config=FinetuneConfig(epochs=2, seed=2)).model


@pytest.fixture(scope="module")
def exported(classifier: FineTunedModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(classifier, out)
    return out


def test_onnx_matches_pytorch(classifier: FineTunedModel, exported: Path, toy_log: pl.DataFrame) -> None:
    b = classifier.build(toy_log, toy_log["event_id"])
    ref = classifier.predict_proba(b)
    np.testing.assert_allclose(OnnxScorer(exported, int8=False).score(b), ref, atol=1e-4)
    q = OnnxScorer(exported, int8=True).score(b)
    assert np.abs(q - ref).max() < 0.1  # int8 weights: close, not equal
    assert spearmanr(q, ref).statistic > 0.95


def test_surprise_export_matches(pretrained: FoundationModel, toy_log: pl.DataFrame, tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(pretrained, tmp_path, kind="surprise", quantize=False)
    b = pretrained.build(toy_log, toy_log["event_id"][:100])
    np.testing.assert_allclose(OnnxScorer(tmp_path, int8=False).score(b), pretrained.surprise(b), rtol=1e-4)


def test_incremental_scorer_matches_batch(classifier: FineTunedModel, exported: Path, toy_log: pl.DataFrame) -> None:
    ref = dict(zip(classifier.build(toy_log).event_ids, classifier.predict_proba(classifier.build(toy_log)),
                   strict=True))
    log = toy_log.sort(["ts", "event_id"])
    warm, live = log.head(600), log.slice(600)
    inc = IncrementalScorer(exported, int8=False)
    assert inc.warm(warm) == 600
    got = {r["event_id"]: inc.score_one(r) for r in live.iter_rows(named=True)}
    assert max(abs(got[k] - ref[k]) for k in got) < 1e-4
