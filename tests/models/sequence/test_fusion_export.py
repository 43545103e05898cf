"""ONNX export of a fitted fusion detector: one graph (token window + features -> probability), parity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy.stats import spearmanr

from shopguard.errors import DataError, ModelError
from shopguard.models.base import load_detector
from shopguard.models.sequence.export import IncrementalScorer, OnnxScorer, export_onnx
from shopguard.models.sequence.fusion import FusionClassifierDetector, FusionInput

from .conftest import make_log, tabular


@pytest.fixture(scope="module")
def data(toy_log: pl.DataFrame) -> dict:
    test = make_log(n_users=12, seed=21, takeover_frac=0.4)
    return {"train": toy_log, "test": test, "ftr": tabular(toy_log), "fte": tabular(test),
            "y": tabular(toy_log).join(toy_log.select("event_id", "label"), on="event_id",
                                       maintain_order="left")["label"].to_numpy()}


@pytest.fixture(scope="module", params=[("frozen", None), ("full", 8)], ids=["frozen", "full-window8"])
def exported(request: pytest.FixtureRequest, pretrained_dir: Path, data: dict,
             tmp_path_factory: pytest.TempPathFactory) -> tuple[FusionClassifierDetector, Path]:
    # frozen: one encoder serves the hidden state and the surprise; full: the surprise comes from the
    # pretrained encoder, the hidden state from the fine-tuned one (two encoders in the graph), over
    # windows of 8 events (the pretrained model's are 12).
    method, window = request.param
    det = FusionClassifierDetector(pretrained=str(pretrained_dir), method=method, epochs=1, max_len=window,
                                   num_threads=1).fit(FusionInput(data["train"], data["ftr"]), data["y"])
    assert det.window == (window or 12)
    folder = tmp_path_factory.mktemp(f"fusion-{method}")
    det.save(folder / "det")
    res = export_onnx(folder / "det", folder / "onnx")  # from the saved folder, as after `shopguard train`
    assert res.kind == "fusion" and res.int8 is not None
    assert load_detector(folder / "det").window == det.window
    return det, folder / "onnx"


def test_fusion_onnx_matches_the_detector(exported: tuple[FusionClassifierDetector, Path], data: dict) -> None:
    det, onnx_dir = exported
    fte = data["fte"]
    want = det.score(FusionInput(data["test"], fte))
    # The one-pass torch graph (what score runs and ONNX exports) == the column-by-column reference.
    np.testing.assert_allclose(want, det.score_reference(FusionInput(data["test"], fte)), atol=1e-5)
    scorer = OnnxScorer(onnx_dir, int8=False)
    assert scorer.feature_names == det.feature_columns
    x = scorer.feature_matrix(fte)
    assert np.isnan(x).any()  # missing values go through the graph (-> the training mean)
    got = scorer.score(det.build(data["test"], fte["event_id"]), features=x)
    np.testing.assert_allclose(got, want, atol=1e-5)
    q = OnnxScorer(onnx_dir, int8=True).score(det.build(data["test"], fte["event_id"]), features=x)
    # int8 (encoder and surprise heads; the head stays fp32): the order holds, a few mid-range
    # probabilities of this 32-wide toy model move (measured: median 4e-5, max 0.14-0.17).
    err = np.abs(q - want)
    assert np.median(err) < 0.01 and err.max() < 0.25 and spearmanr(q, want).statistic > 0.99


def test_incremental_fusion_scoring_equals_batch(exported: tuple[FusionClassifierDetector, Path], data: dict) -> None:
    det, onnx_dir = exported
    fte = data["fte"]
    want = dict(zip(fte["event_id"].to_list(), det.score(FusionInput(data["test"], fte)), strict=True))
    inc = IncrementalScorer(onnx_dir, int8=False)
    feats = {r["event_id"]: r for r in fte.iter_rows(named=True)}
    diffs = [inc.score_one(rec, features=feats[rec["event_id"]]) - want[rec["event_id"]]
             for rec in data["test"].sort(["ts", "event_id"]).head(150).iter_rows(named=True)]
    assert np.abs(diffs).max() < 1e-5
    with pytest.raises(ModelError, match="features"):
        inc.score_one(data["test"].row(0, named=True))
    with pytest.raises(ModelError, match="since_prev_s"):
        inc.scorer.feature_matrix(fte.drop("since_prev_s"))


def test_fit_negatives_caps_the_rows_fitted_on(pretrained_dir: Path, data: dict) -> None:
    y = data["y"]
    det = FusionClassifierDetector(pretrained=str(pretrained_dir), fit_negatives=60, num_threads=1)
    det.fit(FusionInput(data["train"], data["ftr"]), y)
    assert det.finetune_["train_sequences"] == int(y.sum()) + 60 and det.finetune_["train_positives"] == int(y.sum())


def test_window_longer_than_the_pretrained_model_is_a_clear_error(pretrained_dir: Path, data: dict) -> None:
    with pytest.raises(DataError, match="max_len"):
        FusionClassifierDetector(pretrained=str(pretrained_dir), max_len=99).fit(FusionInput(data["train"], data["ftr"]),
                                                                                  data["y"])
