from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from shopguard.api.scoring import sequence_scores
from shopguard.errors import ModelError
from shopguard.models.sequence.config import FinetuneConfig
from shopguard.models.sequence.detectors import (
    BEHAVIOUR_FIELDS,
    SequenceClassifierDetector,
    SequenceSurpriseDetector,
)
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


# -- session surprise served online ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def session_det(pretrained_dir: Path, toy_log: pl.DataFrame) -> SequenceSurpriseDetector:
    # 5 events (< the 12-event window, so the last-k cut matters) and 30 minutes (takeover bursts)
    return SequenceSurpriseDetector(pretrained=str(pretrained_dir), session_events=5).fit(toy_log.drop("label"))


@pytest.fixture(scope="module")
def session_export(session_det: SequenceSurpriseDetector, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("onnx_session")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = export_onnx(session_det, out)
    assert res.kind == "session"
    return out


def test_session_export_carries_the_detector(session_det: SequenceSurpriseDetector, session_export: Path) -> None:
    spec = json.loads((session_export / "export.json").read_text())["session"]
    assert spec["events"] == 5 and spec["minutes"] == 30.0
    assert spec["fields"] == BEHAVIOUR_FIELDS
    np.testing.assert_allclose(spec["stats"], session_det.session_stats_)


def test_session_onnx_matches_the_batch_detector(session_det: SequenceSurpriseDetector, session_export: Path,
                                                toy_log: pl.DataFrame) -> None:
    b = session_det.model_.build(toy_log, toy_log["event_id"])
    ref = session_det.score(b)
    np.testing.assert_allclose(OnnxScorer(session_export, int8=False).score(b), ref, rtol=1e-4, atol=1e-4)
    q = OnnxScorer(session_export, int8=True).score(b)
    assert spearmanr(q, ref).statistic > 0.95  # int8 weights: same ranking, not the same numbers


def test_incremental_session_score_equals_batch(session_det: SequenceSurpriseDetector, session_export: Path,
                                               toy_log: pl.DataFrame) -> None:
    ref = dict(zip(toy_log["event_id"], session_det.score(toy_log), strict=True))
    log = toy_log.sort(["ts", "event_id"])
    warm, live = log.head(600), list(log.slice(600).iter_rows(named=True))
    inc = IncrementalScorer(session_export, int8=False)
    inc.warm(warm)
    got = {r["event_id"]: inc.score_one(r) for r in live}
    assert max(abs(got[k] - ref[k]) for k in got) < 1e-3
    # The service's pass path (stacked windows, one run) gives the one-by-one scores, some events not learnt.
    one, many = IncrementalScorer(session_export, int8=False), IncrementalScorer(session_export, int8=False)
    one.warm(warm)
    many.warm(warm)
    learn = [i % 5 != 3 for i in range(len(live))]
    want = [one.score_one(r, learn=ln) for r, ln in zip(live, learn, strict=True)]
    out: list[float] = []
    for s in range(0, len(live), 7):
        out.extend(sequence_scores(many, live[s:s + 7], learn[s:s + 7]))
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-5)
    q = IncrementalScorer(session_export, int8=True)
    q.warm(warm)
    assert spearmanr([q.score_one(r) for r in live], [ref[r["event_id"]] for r in live]).statistic > 0.9


def test_export_from_a_saved_detector_folder(session_det: SequenceSurpriseDetector, toy_log: pl.DataFrame,
                                            tmp_path: Path) -> None:
    folder = session_det.save(tmp_path / "det")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_onnx(folder, tmp_path / "onnx", quantize=False)
    b = session_det.model_.build(toy_log, toy_log["event_id"][:200])
    np.testing.assert_allclose(OnnxScorer(tmp_path / "onnx", int8=False).score(b), session_det.score(b),
                               rtol=1e-4, atol=1e-4)


def test_export_refuses_other_detectors_and_bad_session(pretrained: FoundationModel, tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="sequence_surprise"):
        export_onnx(SequenceClassifierDetector(), tmp_path)
    with pytest.raises(ModelError, match="events >= 1"):
        export_onnx(pretrained, tmp_path, session={"events": 0})
